from __future__ import annotations

import ast
import base64
import hashlib
import os
import random
from typing import TypeVar

import pytest

from pixelmirror import _urandom, fbcookies, identity
from pixelmirror._urandom import Pool

T = TypeVar("T")


def _seeded_draws(
    monkeypatch: pytest.MonkeyPatch, seed: int, pool: Pool[T], size: int
) -> tuple[list[T], list[bytes]]:
    """600 draws (three batches) from a fresh pool minting as ``pool`` does (a batch at once
    when it does), over seeded bytes; and the ``size`` bytes each value was made of, in the
    same order."""
    rng = random.Random(seed)
    handed: list[bytes] = []

    def urandom(count: int) -> bytes:
        handed.append(rng.randbytes(count))
        return handed[-1]

    monkeypatch.setattr(_urandom.os, "urandom", urandom)
    fresh = Pool(pool._mint, size=size, mint_all=pool._mint_all)
    drawn = [fresh.draw() for _ in range(600)]
    # A pool pops from the end of each batch it minted.
    made_of = [
        batch[at : at + size] for batch in handed for at in reversed(range(0, len(batch), size))
    ]
    return drawn, made_of[: len(drawn)]


@pytest.mark.parametrize("seed", range(3))
def test_visitor_ids_are_what_token_urlsafe_makes_of_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    drawn, made_of = _seeded_draws(monkeypatch, seed, identity._new_visitors, 16)
    ids = [base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") for raw in made_of]
    # With each its external id and the bytes its token signs.
    assert drawn == [(id_, hashlib.sha256(id_.encode()).hexdigest(), id_.encode()) for id_ in ids]
    assert all(identity._VISITOR_ID.fullmatch(drawn_id) for drawn_id, _, _ in drawn)


@pytest.mark.parametrize("seed", range(3))
def test_fbp_numbers_are_what_getrandbits_31_makes_of_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    drawn, made_of = _seeded_draws(monkeypatch, seed, fbcookies._fbp_numbers, 4)
    # SystemRandom.getrandbits(31): four bytes of os.urandom, big-endian, the top 31 bits.
    chunks = iter(made_of)
    monkeypatch.setattr(random, "_urandom", lambda size: next(chunks))
    assert drawn == [random.SystemRandom().getrandbits(31) for _ in made_of]
    assert all(0 <= number < 2**31 for number in drawn)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("pool", [identity._new_visitors, fbcookies._fbp_numbers])
def test_a_forked_child_draws_none_of_the_values_its_parent_left(pool: Pool[object]) -> None:
    pool.draw()  # the parent holds a batch now
    left = list(pool._values)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its draws and leave at once
        try:
            os.write(write, repr([pool.draw() for _ in range(len(left))]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    drawn = ast.literal_eval(child)
    assert len(drawn) == len(left)
    assert not set(left) & set(drawn)


@pytest.mark.parametrize("pool", [identity._new_visitors, fbcookies._fbp_numbers])
@pytest.mark.parametrize("seed", range(3))
def test_a_batch_minted_at_once_is_each_value_minted_alone(pool: Pool[object], seed: int) -> None:
    rng = random.Random(seed)
    size = pool._size
    assert pool._mint_all is not None
    for count in (1, 2, 3, 255, 256, 257):
        raw = rng.randbytes(size * count)
        alone = [pool._mint(raw[at : at + size]) for at in range(0, len(raw), size)]
        assert pool._mint_all(raw) == alone

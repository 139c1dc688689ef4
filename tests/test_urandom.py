from __future__ import annotations

import ast
import base64
import os
import random

import pytest

from pixelmirror import _urandom, fbcookies, identity
from pixelmirror._urandom import Pool


def _seeded_urandom(monkeypatch: pytest.MonkeyPatch, seed: int) -> list[bytes]:
    """Make the pools' os.urandom deterministic; returns the batches it handed out."""
    rng = random.Random(seed)
    handed: list[bytes] = []

    def urandom(size: int) -> bytes:
        handed.append(rng.randbytes(size))
        return handed[-1]

    monkeypatch.setattr(_urandom.os, "urandom", urandom)
    return handed


def _chunks(batches: list[bytes], size: int) -> list[bytes]:
    # A pool pops from the end of each batch it minted.
    return [
        batch[at : at + size] for batch in batches for at in reversed(range(0, len(batch), size))
    ]


@pytest.mark.parametrize("seed", range(3))
def test_visitor_ids_are_what_token_urlsafe_makes_of_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    handed = _seeded_urandom(monkeypatch, seed)
    pool = Pool(identity._visitor_ids._mint, size=16)
    drawn = [pool.draw() for _ in range(600)]  # three batches
    expected = [
        base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") for raw in _chunks(handed, 16)
    ]
    assert drawn == expected[: len(drawn)]
    assert all(identity._VISITOR_ID.fullmatch(drawn_id) for drawn_id in drawn)


@pytest.mark.parametrize("seed", range(3))
def test_fbp_numbers_are_what_getrandbits_31_makes_of_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    handed = _seeded_urandom(monkeypatch, seed)
    pool = Pool(fbcookies._fbp_numbers._mint, size=4)
    drawn = [pool.draw() for _ in range(600)]
    chunks = iter(_chunks(handed, 4))
    # SystemRandom.getrandbits(31): four bytes of os.urandom, big-endian, the top 31 bits.
    monkeypatch.setattr(random, "_urandom", lambda size: next(chunks))
    expected = [random.SystemRandom().getrandbits(31) for _ in drawn]
    assert drawn == expected
    assert all(0 <= number < 2**31 for number in drawn)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("pool", [identity._visitor_ids, fbcookies._fbp_numbers])
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

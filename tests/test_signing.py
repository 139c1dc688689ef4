from __future__ import annotations

import functools
import hashlib
import hmac
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner
from itsdangerous.encoding import base64_encode

from pixelmirror.signing import Seal, _hmac_pads

KEY = "k" * 32
OLD_KEY = "o" * 32
SALT = "pixelmirror.visitor"
NOW = 1_700_000_000

# Values a cookie carries (ASCII): a visitor id, the carry cookie's base64 payload, its
# compressed form (leading "."), a value with dots, and nothing at all.
VALUES = [b"AbCdEfGhIjKlMnOpQrSt_-", b"eyJhIjpbMSwyXX0", b".eJyLjgUAARUAuQ", b"a.b.c", b""]
TIMES = [0, 1, 255, 256, NOW, 2**32 + 7]


class _SignerAt(TimestampSigner):
    """itsdangerous' own signer with a fixed clock."""

    def __init__(self, key: str | list[str], at: int, salt: str = SALT) -> None:
        super().__init__(key, salt=salt)
        self.at = at

    def get_timestamp(self) -> int:
        return self.at


@pytest.mark.parametrize("at", TIMES)
@pytest.mark.parametrize("value", VALUES)
def test_itsdangerous_verifies_our_tokens(value: bytes, at: int) -> None:
    token = Seal([KEY], SALT).seal(value, at)
    unsigned, signed_at = TimestampSigner(KEY, salt=SALT).unsign(token, return_timestamp=True)
    assert unsigned == value
    assert signed_at.timestamp() == at


@pytest.mark.parametrize("at", TIMES)
@pytest.mark.parametrize("value", VALUES)
def test_we_verify_itsdangerous_tokens(value: bytes, at: int) -> None:
    token = _SignerAt(KEY, at).sign(value).decode()
    assert Seal([KEY], SALT).open(token) == (value, float(at), True)


@pytest.mark.parametrize("value", VALUES)
def test_our_tokens_are_itsdangerous_tokens_byte_for_byte(value: bytes) -> None:
    assert Seal([KEY], SALT).seal(value, NOW) == _SignerAt(KEY, NOW).sign(value).decode()


def test_key_rotation_agrees_with_itsdangerous_key_lists() -> None:
    # Ours are newest first; itsdangerous lists keys oldest first and signs with the last.
    ours, theirs = Seal([KEY, OLD_KEY], SALT), _SignerAt([OLD_KEY, KEY], NOW)
    assert ours.seal(b"v", NOW) == theirs.sign(b"v").decode()
    retired = _SignerAt(OLD_KEY, NOW).sign(b"v").decode()
    assert ours.open(retired) == (b"v", float(NOW), False)
    assert theirs.unsign(Seal([OLD_KEY], SALT).seal(b"v", NOW)) == b"v"


@pytest.mark.parametrize(
    "signer",
    [
        pytest.param(_SignerAt(KEY, NOW, salt="another.salt"), id="other-salt"),
        pytest.param(_SignerAt("x" * 32, NOW), id="other-key"),
    ],
)
def test_neither_side_verifies_a_token_of_another_key_or_salt(signer: TimestampSigner) -> None:
    assert Seal([KEY], SALT).open(signer.sign(b"v").decode()) is None
    with pytest.raises(BadSignature):
        TimestampSigner(KEY, salt=SALT).unsign(Seal(["x" * 32], SALT).seal(b"v", NOW))


@pytest.mark.parametrize(
    "token",
    ["", "no-dot", "v.AAAA.not*base64", "v.bad", "\udcff.x.y", "v" * 300],
)
def test_what_itsdangerous_refuses_we_refuse(token: str) -> None:
    assert Seal([KEY], SALT).open(token) is None
    with pytest.raises((BadSignature, SignatureExpired, UnicodeEncodeError)):
        TimestampSigner(KEY, salt=SALT).unsign(token)


_keys = st.text(min_size=1, max_size=40)
_values = st.binary(max_size=60).map(lambda raw: base64_encode(raw))
_times = st.integers(min_value=0, max_value=2**40)


@settings(max_examples=200, deadline=None)
@given(key=_keys, value=_values, at=_times)
def test_tokens_and_verdicts_match_itsdangerous_for_any_key_value_and_time(
    key: str, value: bytes, at: int
) -> None:
    ours = Seal([key], SALT)
    token = ours.seal(value, at)
    assert token == _SignerAt(key, at).sign(value).decode()
    try:
        unsigned, signed_at = TimestampSigner(key, salt=SALT).unsign(token, return_timestamp=True)
    except (BadSignature, ValueError):  # ValueError: a stamp past the year 9999
        assert ours.open(token) is None
    else:
        assert ours.open(token) == (unsigned, signed_at.timestamp(), True)


@pytest.mark.parametrize("at", [253_402_300_799, 253_402_300_800, 2**48])
def test_a_stamp_past_the_year_9999_is_refused_as_itsdangerous_does(at: int) -> None:
    token = _SignerAt(KEY, at).sign(b"v").decode()
    try:
        TimestampSigner(KEY, salt=SALT).unsign(token, return_timestamp=True)
    except (BadSignature, ValueError):
        assert Seal([KEY], SALT).open(token) is None
    else:
        assert Seal([KEY], SALT).open(token) == (b"v", at, True)


@pytest.mark.parametrize("seed", range(4))
def test_one_seal_stamps_second_after_second_as_itsdangerous_does(seed: int) -> None:
    # One Seal keeps the last second's encoded stamp: repeated, fractional, earlier and
    # later times must all give itsdangerous' token.
    rng = random.Random(seed)
    seal = Seal([KEY], SALT)
    at = float(rng.choice(TIMES))
    for _ in range(300):
        at = max(0.0, at + rng.choice([0.0, 0.25, 0.999, 1.0, -1.0, 3600.0, -0.5, 2**20]))
        value = rng.choice(VALUES)
        assert seal.seal(value, at) == _SignerAt(KEY, int(at)).sign(value).decode(), at


# What may stand in a mangled token: base64 of both alphabets, padding, separators, and
# characters outside every alphabet (skipped by the lenient decoder, as by itsdangerous').
_MANGLING = "AQgw09az_-+/=.. *~\té\n"


def _verdict(token: str) -> tuple[bytes, int, bool] | None:
    try:
        value, at = TimestampSigner(KEY, salt=SALT).unsign(token, return_timestamp=True)
    except (BadSignature, ValueError):
        return None
    return value, int(at.timestamp()), True


@pytest.mark.parametrize("seed", range(4))
def test_mangled_tokens_get_itsdangerous_verdicts(seed: int) -> None:
    rng = random.Random(seed)
    seal = Seal([KEY], SALT)
    for _ in range(1000):
        token = list(seal.seal(rng.choice(VALUES), rng.choice(TIMES)))
        for _ in range(rng.randint(0, 3)):
            at = rng.randrange(len(token) + 1)
            action = rng.randrange(3)
            if action == 0:
                token.insert(at, rng.choice(_MANGLING))
            elif token and action == 1:
                del token[min(at, len(token) - 1)]
            elif token:
                token[min(at, len(token) - 1)] = rng.choice(_MANGLING)
        mangled = "".join(token)
        assert seal.open(mangled) == _verdict(mangled), mangled


# The SHA-1/SHA-2 pads are CPython's own objects, the others hashlib's; a BLAKE2 of another
# size than its name's default keeps its own constructor.
@pytest.mark.parametrize(
    "digest",
    [
        hashlib.sha1,
        hashlib.sha224,
        hashlib.sha256,
        hashlib.sha384,
        hashlib.sha512,
        hashlib.md5,
        functools.partial(hashlib.blake2b, digest_size=20),
    ],
)
def test_hmac_from_the_kept_pads_is_hmac_new_for_any_key_and_value(digest: Any) -> None:
    rng = random.Random(digest().name)
    for _ in range(300):
        # Keys up to past two blocks: a long key is hashed first, as hmac.new does.
        key, value = rng.randbytes(rng.randint(0, 300)), rng.randbytes(rng.randint(0, 200))
        signer = TimestampSigner(key, salt=SALT, digest_method=digest, key_derivation="none")
        pads = _hmac_pads(signer, key)
        assert pads is not None
        inner, outer = pads[0].copy(), pads[1].copy()
        inner.update(value)
        outer.update(inner.digest())
        assert outer.digest() == hmac.new(key, value, digest).digest()

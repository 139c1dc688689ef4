"""Timestamped signatures for cookies, in itsdangerous' ``TimestampSigner`` token format.

Why a signer of our own: every request with a cookie opens one. itsdangerous derives the key
again for each signature and computes the HMAC through ``hmac.new`` with a Python digest
wrapper; :class:`Seal` keys one HMAC object per key once and copies it per token, and reads
the timestamp as an integer (no ``datetime``). Opening a visitor cookie measured about 13 to
6 µs, sealing one 8 to 5 µs, on the request path of every returning visitor. The tokens are
itsdangerous' byte for byte (same key derivation, salt, digest and encoding), so either side
verifies the other's, and the verdicts are those of ``TimestampSigner.unsign``.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from itsdangerous import TimestampSigner
from itsdangerous.encoding import base64_decode, base64_encode
from itsdangerous.signer import HMACAlgorithm

__all__ = ["Seal"]

# The last second a datetime can hold (9999-12-31 23:59:59 UTC): itsdangerous refuses a
# token stamped later, because it cannot turn the stamp into a datetime.
_LAST_STAMP = 253_402_300_799


class Seal:
    """A timestamped HMAC of a value: the first key signs, every key verifies.

    Tokens are :class:`~itsdangerous.TimestampSigner`'s own format (``value.time.signature``),
    but stamped with the caller's clock, so ``now=`` works without patching ``time``. One
    signer per key (newest first, the reverse of itsdangerous' list order) tells which key
    matched, so a token of a retired key can be re-signed.
    """

    __slots__ = ("_keyed", "_keys", "_signers")

    def __init__(self, keys: Sequence[str], salt: str) -> None:
        self._signers = tuple(TimestampSigner(key, salt=salt) for key in keys)
        self._keys = tuple(signer.derive_key() for signer in self._signers)
        # Each derived key in an HMAC object keyed once; a copy per token skips re-keying
        # (two hash blocks) and stays in C: the same bytes as Signer.get_signature().
        self._keyed = tuple(
            _keyed_hmac(signer, key) for signer, key in zip(self._signers, self._keys, strict=True)
        )

    def _signature(self, index: int, value: bytes) -> bytes:
        keyed = self._keyed[index]
        if keyed is None:
            signer = self._signers[index]
            return signer.algorithm.get_signature(self._keys[index], value)
        mac = keyed.copy()
        mac.update(value)
        return mac.digest()

    def seal(self, value: bytes, now: float) -> str:
        stamp = max(0, int(now))
        stamped = value + b"." + base64_encode(stamp.to_bytes((stamp.bit_length() + 7) // 8, "big"))
        signature = base64_encode(self._signature(0, stamped))
        return (stamped + b"." + signature).decode("ascii")

    def open(self, token: str) -> tuple[bytes, int, bool] | None:
        """``(value, signed at, by the newest key)``, or None for anything not ours.

        The same verdicts as ``signer.unsign(token, return_timestamp=True)`` tried with each
        key in turn (the first key whose signature matches tells the timestamp), without
        building a signer call and an exception per key.
        """
        try:
            signed = token.encode("utf-8")
        except UnicodeEncodeError:
            return None  # not text
        stamped, sep, encoded_signature = signed.rpartition(b".")
        if not sep:
            return None
        try:
            signature = base64_decode(encoded_signature)
        except Exception:
            return None
        newest: bool | None = None
        for index in range(len(self._keyed)):
            if hmac.compare_digest(signature, self._signature(index, stamped)):
                newest = index == 0
                break
        if newest is None:
            return None  # tampered, or signed with a key we do not have
        value, sep, stamp = stamped.rpartition(b".")
        if not sep:
            return None
        try:
            seconds = int.from_bytes(base64_decode(stamp), "big")
        except Exception:
            return None
        if seconds > _LAST_STAMP:
            return None  # a timestamp no clock can hold
        return value, seconds, newest


def _keyed_hmac(signer: TimestampSigner, key: bytes) -> hmac.HMAC | None:
    """An HMAC object keyed with ``key`` by the signer's digest, when hashlib names it."""
    algorithm = signer.algorithm
    if type(algorithm) is not HMACAlgorithm:
        return None
    name = getattr(algorithm.digest_method(b""), "name", None)
    if name not in ("sha1", "sha256", "sha512"):
        return None
    return hmac.new(key, digestmod=name)

"""Phone numbers as Meta hashes them: the country code first, digits only.

Meta asks for the country code on every number. A number written the national way
(``(650) 555-1212``, ``020 7946 0000``) gets it from the user's country, for the countries of
:data:`pixelmirror._geo.PHONE_NUMBERING`; a number given with ``+`` or ``00`` is taken as it is.
"""

from __future__ import annotations

import re
import unicodedata

from . import _geo

_NON_DIGITS = re.compile(r"\D+")
_NUMBERING: dict[str, tuple[str, str, int, int]] = {
    alpha2: (code, trunk, shortest, longest)
    for alpha2, code, trunk, shortest, longest in _geo.PHONE_NUMBERING
}


class Unusable(ValueError):
    """Not a phone number Meta could match; the message says why (never the number)."""


# "+44 (0)20 7946 0000": the bracketed national trunk zero after an international prefix is
# not dialled from abroad and not part of the E.164 number.
_TRUNK_ZERO = re.compile(r"(\+\s*\d{1,3}\s*)\(\s*0\s*\)")
# An extension at the end ("ext. 123", "x123", "#123") reaches a desk, not a subscriber. Each
# form holds an x or a #, and only x and X are an x to IGNORECASE.
_EXTENSION = re.compile(r"\s*(?:(?:ext|extn|extension)\.?|x|#)\s*\d+\s*$", re.IGNORECASE)


def phone_digits(text: str, country: str | None) -> str:
    """The digits Meta hashes for a phone number: country code first, no trunk prefix, no
    extension. ``country`` (alpha-2) completes a number written the national way, for the
    countries of :data:`pixelmirror._geo.PHONE_NUMBERING`; raises :class:`Unusable`."""
    # Each pattern is tried only where it can match: substituting costs more than looking.
    if "(" in text and _TRUNK_ZERO.search(text):
        text = _TRUNK_ZERO.sub(r"\1", text)
    if ("x" in text or "X" in text or "#" in text) and _EXTENSION.search(text):
        text = _EXTENSION.sub("", text)
    digits = _NON_DIGITS.sub("", text)
    if not digits.isascii():  # other scripts' digits, e.g. Arabic-Indic
        digits = "".join(str(unicodedata.decimal(ch)) for ch in digits)
    numbering = _NUMBERING.get(country) if country else None
    if numbering is None or "+" in text or digits.startswith("00"):
        # Leading zeros go, which also removes a "00" international prefix. Without a known
        # country, a national number is hashed as given and will not match.
        digits = digits.lstrip("0")
    else:
        digits = _international(digits, *numbering)
    if not 7 <= len(digits) <= 15:
        raise Unusable(
            f"phone number has {len(digits)} digits; expected 7 to 15 including the country code"
        )
    return digits


def _international(digits: str, code: str, trunk: str, shortest: int, longest: int) -> str:
    """A number written without ``+`` or ``00``, in a known country, with its calling code.

    The national form wins where it fits: with the trunk prefix (``020 7946 0000`` in GB),
    or in a country that dials none (Italy's ``06 ...``: its 0 stays), a number of national
    length. Then a number that already starts with the calling code (``447911123456``), also
    with the bracketed trunk prefix written after it (``44 (0)20 ...``); then a national
    number written without its trunk prefix. Anything else is hashed as given.
    """
    national = len(digits)
    if trunk and digits.startswith(trunk) and shortest <= national - len(trunk) <= longest:
        return code + digits[len(trunk) :]
    if not trunk and shortest <= national <= longest:
        return code + digits
    if digits.startswith(code):
        rest = digits[len(code) :]
        if trunk and rest.startswith(trunk) and shortest <= len(rest) - len(trunk) <= longest:
            return code + rest[len(trunk) :]
        if shortest <= len(rest) <= longest:
            return digits
    if trunk and shortest <= national <= longest:
        return code + digits
    return digits.lstrip("0")

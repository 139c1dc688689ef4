"""Meta's rules for each ``user_data`` field: the text a contact field is hashed from (and its
SHA-256), and the checks of the fields sent in clear.

Each rule takes the trimmed text and the user's :class:`Place` and returns what to hash, or
raises :class:`Drop` with a reason that names no value. :mod:`pixelmirror.normalize` applies
them to a whole ``user_data`` mapping, keeps recent results and logs the drops.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from collections.abc import Callable
from datetime import date
from typing import NamedTuple

from . import _geo
from .phones import Unusable, phone_digits
from .proxies import IPAddress, canonical_ip

# --------------------------------------------------------------------------------------------
# Text helpers

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_ASCII_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
_ASCII_NOT_ALNUM_SPACE = re.compile(r"[^a-z0-9\s]+")


def builtin_hash(name: str) -> Callable[..., hashlib._Hash] | None:
    """CPython's own constructor of hash ``name`` (``"sha1"``, ``"sha256"``), if it has one:
    for the short texts hashed on a request, one block or two, its object costs far less to
    make, copy and finish than OpenSSL's, for the same digests."""
    try:
        made: Callable[..., hashlib._Hash] = getattr(hashlib, "__get_builtin_constructor")(name)
    except (AttributeError, ValueError):
        return None
    return made


#: ``hashlib.sha256``, cheaper for short texts.
_SHA256 = builtin_hash("sha256") or hashlib.sha256


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of ``value`` encoded as UTF-8."""
    return _SHA256(value.encode("utf-8")).hexdigest()


def _fold(value: str) -> str:
    """Lookup key: lowercase, accents removed, only letters and digits (any script) kept."""
    if value.isascii():
        # Most lookups ("CA", "US") are letters already: nothing to remove.
        return value.lower() if value.isalnum() else _ASCII_NOT_ALNUM.sub("", value.lower())
    decomposed = unicodedata.normalize("NFKD", value.lower())
    return "".join(ch for ch in decomposed if ch.isalnum())


def _letters(value: str, *, spaces: bool) -> str:
    """Lowercase, punctuation and symbols removed, letters of any script and digits kept;
    :class:`Drop` if nothing is left.

    Accents stay (Meta hashes ``valéry``, not ``valery``); text is NFC so a decomposed ``é``
    hashes like a composed one. With ``spaces`` runs of whitespace become one space, otherwise
    all whitespace goes. Punctuation is deleted, not turned into a space: ``Mary-Ann`` ->
    ``maryann``.
    """
    if value.isascii() and value.isalnum():  # "Ann": nothing to remove, no space to fold
        return value.lower()
    if value.isascii():
        text = _ASCII_NOT_ALNUM_SPACE.sub("", value.lower())
    else:
        text = "".join(
            ch
            for ch in unicodedata.normalize("NFC", value.lower())
            if ch.isspace() or unicodedata.category(ch)[0] in "LMN"
        )
    letters = " ".join(text.split()) if spaces else "".join(text.split())
    if not letters:
        raise Drop("no letters left after removing punctuation")
    return letters


class Drop(Exception):
    """A value that cannot be normalised; ``reason`` is logged, the value never is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Lookup tables, built once at import


def _build_countries() -> dict[str, str]:
    table: dict[str, str] = {}
    for alpha2, alpha3, *names in _geo.COUNTRIES:
        table[alpha2] = alpha2
        table[alpha3] = alpha2
        for name in names:
            table.setdefault(_fold(name), alpha2)
    for name, alpha2 in _geo.COUNTRY_ALIASES:
        table.setdefault(_fold(name), alpha2)
    return table


def _build_states() -> dict[str, str]:
    table = {_fold(name): code for code, name in _geo.US_STATES}
    for name, code in _geo.US_STATE_ALIASES:
        table.setdefault(_fold(name), code)
    return table


_COUNTRIES = _build_countries()
_US_STATES = _build_states()
_US_HASH = sha256_hex("us")
# A country given already hashed is still known, by its hash.
_COUNTRY_OF_HASH = {sha256_hex(alpha2): alpha2 for alpha2, *_ in _geo.COUNTRIES}

_GENDERS = {
    "f": "f",
    "female": "f",
    "woman": "f",
    "w": "f",
    "m": "m",
    "male": "m",
    "man": "m",
}


# --------------------------------------------------------------------------------------------
# The user's place


class Place(NamedTuple):
    """Where the user is, as far as the rules need to know."""

    #: In the US (True), elsewhere (False) or unknown (None: no country given).
    us: bool | None
    #: The alpha-2 code that completes a phone number written the national way: the one
    #: country given, else the default country; None when unknown or ambiguous.
    phone_country: str | None


def country_code(name: str) -> str | None:
    """The ISO 3166-1 alpha-2 code of a country's code or English name; None if unknown."""
    return _COUNTRIES.get(_fold(name))


#: No country given: nothing known. A given country is hashed by the rules first, as this.
NOWHERE = Place(None, None)


def place_of(country_hashes: list[str], default: str | None) -> Place:
    """The user's place, from the hashes of the countries given (distinct) and the default."""
    if not country_hashes:
        return Place(None, default)
    # Several countries: the US rules apply if one is the US; a phone's is ambiguous.
    alone = _COUNTRY_OF_HASH.get(country_hashes[0]) if len(country_hashes) == 1 else None
    return Place(_US_HASH in country_hashes, alone)


# --------------------------------------------------------------------------------------------
# Rules for hashed keys. Each takes the trimmed, non-empty text and the user's Place, and
# returns the normalised text to hash or raises Drop.

_Rule = Callable[[str, Place], str]

# Meta only asks for "trim, lowercase"; this is a sanity check, not RFC 5322.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")


def _email(text: str, place: Place) -> str:
    text = text.lower()
    if not _EMAIL.fullmatch(text):
        raise Drop("not an email address (expected name@domain.tld)")
    return text


def _phone(text: str, place: Place) -> str:
    try:
        return phone_digits(text, place.phone_country)
    except Unusable as unusable:
        raise Drop(str(unusable)) from None


def _name(text: str, place: Place) -> str:
    # Meta's docs: "lowercase only with no punctuation", UTF-8 for non-Roman letters; they say
    # nothing about inner spaces (for ct they say "no spaces" explicitly). The Meta pixel hashes
    # "a b" with its space (hash c8687a08... reported in facebookincubator/ConversionsAPI-Tag-
    # for-GoogleTagManager#24), so inner spaces are kept, runs of them collapsed to one.
    return _letters(text, spaces=True)


def _gender(text: str, place: Place) -> str:
    code = _GENDERS.get(_fold(text))
    if code is None:
        raise Drop("gender must be f or m (female/male)")
    return code


# Accepted dates of birth: YYYYMMDD; year first with one separator (YYYY-MM-DD, YYYY/MM/DD,
# YYYY.MM.DD); year last with "/" or "-" read as US MM/DD/YYYY unless the first number is over
# 12 (then DD/MM/YYYY); year last with "." read as European DD.MM.YYYY. Two-digit years are
# refused: the century is a guess.
_DB_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})", re.ASCII)
_DB_YEAR_FIRST = re.compile(r"(\d{4})([-/.])(\d{1,2})\2(\d{1,2})", re.ASCII)
_DB_YEAR_LAST = re.compile(r"(\d{1,2})([-/.])(\d{1,2})\2(\d{4})", re.ASCII)
_MIN_BIRTH_YEAR = 1900


def _birth_date(text: str, place: Place) -> str:
    if match := _DB_COMPACT.fullmatch(text):
        year, month, day = (int(part) for part in match.groups())
    elif match := _DB_YEAR_FIRST.fullmatch(text):
        year, month, day = int(match[1]), int(match[3]), int(match[4])
    elif match := _DB_YEAR_LAST.fullmatch(text):
        first, second, year = int(match[1]), int(match[3]), int(match[4])
        if match[2] == "." or first > 12:
            day, month = first, second
        else:
            month, day = first, second
    else:
        raise Drop("date of birth format not recognised (use YYYY-MM-DD or MM/DD/YYYY)")
    try:
        born = date(year, month, day)
    except ValueError:
        raise Drop("date of birth is not a real calendar date") from None
    if year < _MIN_BIRTH_YEAR or born > date.today():
        raise Drop("date of birth must be between 1900 and today")
    return f"{year:04d}{month:02d}{day:02d}"


def _city(text: str, place: Place) -> str:
    return _letters(text, spaces=False)


def _state(text: str, place: Place) -> str:
    # US state names map to their code unless a country other than the US was given
    # ("Georgia" with country "ge" stays "georgia").
    if place.us is not False and (code := _US_STATES.get(_fold(text))):
        return code
    return _letters(text, spaces=False)


_ZIP_JUNK = re.compile(r"[\s\-\u2010-\u2015\u2212]+")
_US_ZIP = re.compile(r"\d{5}(?:\d{4})?", re.ASCII)


def _zip(text: str, place: Place) -> str:
    # Most codes hold no space or dash: no substitution then.
    code = text.lower() if text.isascii() and text.isalnum() else _ZIP_JUNK.sub("", text.lower())
    if not code:
        raise Drop("nothing left after removing spaces and dashes")
    # US ZIP (5 digits) or ZIP+4: Meta wants the first 5 digits. Unless the country says
    # otherwise, a 5- or 9-digit code is taken for a US one.
    if place.us is not False and _US_ZIP.fullmatch(code):
        return code[:5]
    return code


def _country(text: str, place: Place) -> str:
    key = _fold(text)
    code = _COUNTRIES.get(key)
    if code is None and key.startswith("the"):  # "The Netherlands", "the Bahamas"
        code = _COUNTRIES.get(key[3:])
    if code is None:
        raise Drop("not a recognised country (use an ISO 3166-1 code or an English name)")
    return code


def _external_id(text: str, place: Place) -> str:
    # Trim and lowercase like Meta's Parameter Builder. The pixel must get the same hash.
    return text.lower()


_RULES: dict[str, _Rule] = {
    "em": _email,
    "ph": _phone,
    "fn": _name,
    "ln": _name,
    "db": _birth_date,
    "ge": _gender,
    "ct": _city,
    "st": _state,
    "zp": _zip,
    "country": _country,
    "external_id": _external_id,
}


def hashed(wire: str, value: object, place: Place) -> str | None:
    """The SHA-256 hex of a contact field by its rule; None when blank. A value that already
    is 64 hex digits is taken as a hash, only lowercased."""
    if isinstance(value, date):  # datetime is a date too; only db accepts these
        text = f"{value.year:04d}{value.month:02d}{value.day:02d}"
    else:
        text = str(value).strip()
        if not text:
            return None
        if len(text) == 64 and _SHA256_HEX.fullmatch(text):  # already hashed by the caller
            return text.lower()
    return sha256_hex(_RULES[wire](text, place))


# --------------------------------------------------------------------------------------------
# Keys sent in clear

# An IPv4 address in canonical form: four decimal octets 0-255, no leading zeros.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PLAIN_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def plain(wire: str, value: object) -> object | None:
    """A field sent in clear, as sent; None when blank. An IP address in canonical form."""
    if isinstance(value, str) and not value.strip():
        return None
    if wire != "client_ip_address":
        return value  # user agent, fbp, fbc (case-sensitive!), ids: verbatim
    if isinstance(value, str) and _PLAIN_IPV4.fullmatch(text := value.strip()):
        return text  # already what ip_address(text).compressed would give, at a tenth the cost
    ip: IPAddress
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        ip = value
    else:
        try:
            ip = ipaddress.ip_address(str(value).strip())
        except ValueError:
            raise Drop("not an IPv4 or IPv6 address") from None
    return canonical_ip(ip).compressed

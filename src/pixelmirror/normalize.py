"""Meta's documented ``user_data`` normalisation and SHA-256 hashing.

Pure functions, no framework imports. :func:`normalize_user_data` turns the Python API's
``user_data`` mapping (Meta SDK long names or Meta's short wire keys) into the wire dict the
Conversions API wants: contact fields normalised by Meta's rules and SHA-256 hashed, technical
fields (IP, user agent, ``fbp``/``fbc``, ids) checked and kept as they are.

A programming error (unknown key, value of the wrong type) raises :class:`ValueError`. A value
that is merely unusable (a malformed email, an impossible date of birth) is dropped with a
``WARNING`` on the ``pixelmirror`` logger that names the key and the reason, never the value:
it is personal data.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import date
from typing import NamedTuple, cast

from . import _geo
from .meta import HASHED_KEYS, USER_DATA_KEYS, WIRE_KEYS
from .phones import Unusable, phone_digits
from .proxies import IPAddress, canonical_ip

__all__ = [
    "normalize_user_data",
    "sha256_hex",
]

_log = logging.getLogger("pixelmirror.normalize")

_ACCEPTED_KEYS = ", ".join(USER_DATA_KEYS)
_WIRE_OF: dict[str, str] = dict(USER_DATA_KEYS)

# Scalar types each wire key accepts. An int zip code is refused: its leading zeros are gone.
_TYPES: dict[str, tuple[type, ...]] = {
    **{key: (str,) for key in WIRE_KEYS},
    "ph": (str, int),
    "db": (str, int, date),
    "external_id": (str, int),
    "client_ip_address": (str, ipaddress.IPv4Address, ipaddress.IPv6Address),
    "subscription_id": (str, int),
    "fb_login_id": (str, int),
    "lead_id": (str, int),
}
_TYPE_NAMES: dict[str, str] = {
    key: " or ".join(t.__name__ for t in types) for key, types in _TYPES.items()
}


# --------------------------------------------------------------------------------------------
# Text helpers

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_ASCII_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
_ASCII_NOT_ALNUM_SPACE = re.compile(r"[^a-z0-9\s]+")


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of ``value`` encoded as UTF-8."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _fold(value: str) -> str:
    """Lookup key: lowercase, accents removed, only letters and digits (any script) kept."""
    if value.isascii():
        return _ASCII_NOT_ALNUM.sub("", value.lower())
    decomposed = unicodedata.normalize("NFKD", value.lower())
    return "".join(ch for ch in decomposed if ch.isalnum())


def _letters(value: str, *, spaces: bool) -> str:
    """Lowercase, punctuation and symbols removed, letters of any script and digits kept.

    Accents stay (Meta hashes ``valéry``, not ``valery``); text is NFC so a decomposed ``é``
    hashes like a composed one. With ``spaces`` runs of whitespace become one space, otherwise
    all whitespace goes. Punctuation is deleted, not turned into a space: ``Mary-Ann`` ->
    ``maryann``.
    """
    if value.isascii():
        text = _ASCII_NOT_ALNUM_SPACE.sub("", value.lower())
    else:
        text = "".join(
            ch
            for ch in unicodedata.normalize("NFC", value.lower())
            if ch.isspace() or unicodedata.category(ch)[0] in "LMN"
        )
    return " ".join(text.split()) if spaces else "".join(text.split())


class _Drop(Exception):
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
# Rules for hashed keys. Each takes the trimmed, non-empty text and the user's _Place, and
# returns the normalised text to hash or raises _Drop.


class _Place(NamedTuple):
    """Where the user is, as far as the rules need to know."""

    #: In the US (True), elsewhere (False) or unknown (None: no country given).
    us: bool | None
    #: The alpha-2 code that completes a phone number written the national way: the one
    #: country given, else the default country; None when unknown or ambiguous.
    phone_country: str | None


_Rule = Callable[[str, _Place], str]

# Meta only asks for "trim, lowercase"; this is a sanity check, not RFC 5322.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")


def _email(text: str, place: _Place) -> str:
    text = text.lower()
    if not _EMAIL.fullmatch(text):
        raise _Drop("not an email address (expected name@domain.tld)")
    return text


def _phone(text: str, place: _Place) -> str:
    try:
        return phone_digits(text, place.phone_country)
    except Unusable as unusable:
        raise _Drop(str(unusable)) from None


def _name(text: str, place: _Place) -> str:
    # Meta's docs: "lowercase only with no punctuation", UTF-8 for non-Roman letters; they say
    # nothing about inner spaces (for ct they say "no spaces" explicitly). The Meta pixel hashes
    # "a b" with its space (hash c8687a08... reported in facebookincubator/ConversionsAPI-Tag-
    # for-GoogleTagManager#24), so inner spaces are kept, runs of them collapsed to one.
    name = _letters(text, spaces=True)
    if not name:
        raise _Drop("no letters left after removing punctuation")
    return name


def _gender(text: str, place: _Place) -> str:
    code = _GENDERS.get(_fold(text))
    if code is None:
        raise _Drop("gender must be f or m (female/male)")
    return code


# Accepted dates of birth: YYYYMMDD; year first with one separator (YYYY-MM-DD, YYYY/MM/DD,
# YYYY.MM.DD); year last with "/" or "-" read as US MM/DD/YYYY unless the first number is over
# 12 (then DD/MM/YYYY); year last with "." read as European DD.MM.YYYY. Two-digit years are
# refused: the century is a guess.
_DB_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})", re.ASCII)
_DB_YEAR_FIRST = re.compile(r"(\d{4})([-/.])(\d{1,2})\2(\d{1,2})", re.ASCII)
_DB_YEAR_LAST = re.compile(r"(\d{1,2})([-/.])(\d{1,2})\2(\d{4})", re.ASCII)
_MIN_BIRTH_YEAR = 1900


def _birth_date(text: str, place: _Place) -> str:
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
        raise _Drop("date of birth format not recognised (use YYYY-MM-DD or MM/DD/YYYY)")
    try:
        born = date(year, month, day)
    except ValueError:
        raise _Drop("date of birth is not a real calendar date") from None
    if year < _MIN_BIRTH_YEAR or born > date.today():
        raise _Drop("date of birth must be between 1900 and today")
    return f"{year:04d}{month:02d}{day:02d}"


def _city(text: str, place: _Place) -> str:
    city = _letters(text, spaces=False)
    if not city:
        raise _Drop("no letters left after removing punctuation")
    return city


def _state(text: str, place: _Place) -> str:
    # US state names map to their code unless a country other than the US was given
    # ("Georgia" with country "ge" stays "georgia").
    if place.us is not False and (code := _US_STATES.get(_fold(text))):
        return code
    state = _letters(text, spaces=False)
    if not state:
        raise _Drop("no letters left after removing punctuation")
    return state


_ZIP_JUNK = re.compile(r"[\s\-\u2010-\u2015\u2212]+")
_US_ZIP = re.compile(r"\d{5}(?:\d{4})?", re.ASCII)


def _zip(text: str, place: _Place) -> str:
    code = _ZIP_JUNK.sub("", text.lower())
    if not code:
        raise _Drop("nothing left after removing spaces and dashes")
    # US ZIP (5 digits) or ZIP+4: Meta wants the first 5 digits. Unless the country says
    # otherwise, a 5- or 9-digit code is taken for a US one.
    if place.us is not False and _US_ZIP.fullmatch(code):
        return code[:5]
    return code


def _country(text: str, place: _Place) -> str:
    key = _fold(text)
    code = _COUNTRIES.get(key)
    if code is None and key.startswith("the"):  # "The Netherlands", "the Bahamas"
        code = _COUNTRIES.get(key[3:])
    if code is None:
        raise _Drop("not a recognised country (use an ISO 3166-1 code or an English name)")
    return code


def _external_id(text: str, place: _Place) -> str:
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


def _hashed(wire: str, value: object, place: _Place) -> str | None:
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


def _plain(wire: str, value: object) -> object | None:
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
            raise _Drop("not an IPv4 or IPv6 address") from None
    return canonical_ip(ip).compressed


# --------------------------------------------------------------------------------------------
# Entry point


def _check_type(key: str, wire: str, value: object, where: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, _TYPES[wire]):
        allowed = _TYPE_NAMES[wire]
        if wire in HASHED_KEYS:
            allowed += f" (or a list of {allowed})"
        raise ValueError(f"user_data[{key!r}]{where} must be {allowed}; got {type(value).__name__}")


def normalize_user_data(
    user_data: Mapping[str, object], *, default_country: str | None = None
) -> dict[str, object]:
    """Meta's wire ``user_data`` for this Python API ``user_data``.

    Keys may be Meta SDK long names or wire keys (see :data:`pixelmirror.meta.USER_DATA_KEYS`);
    the result has wire keys only, in :data:`~pixelmirror.meta.WIRE_KEYS` order. Contact fields
    are normalised by Meta's rules and SHA-256 hashed; a value that already is 64 hex characters
    is taken as a hash and only lowercased. A list or tuple of values (allowed for hashed keys)
    gives a list of distinct hashes, in order; so does giving one key under two names (``email``
    and ``em``).

    ``None`` and empty values are skipped. A value that cannot be normalised is dropped with a
    warning on the ``pixelmirror`` logger naming the key and the reason (never the value); a
    key whose every value is dropped is left out.

    A phone number written without ``+`` or ``00`` gets its country calling code (a national
    trunk prefix and an extension removed) when the country is known: the ``country`` given,
    else ``default_country`` (an ISO 3166-1 code or name), for the countries of
    :data:`pixelmirror._geo.PHONE_NUMBERING`; other numbers are hashed as given.

    Raises :class:`ValueError` for an unknown key, a value of the wrong type or an unknown
    ``default_country``.
    """
    default = _default_country(default_country)
    items = tuple(user_data.items())
    # The usual call (every key and value a plain string) is kept whole, see _kept_strings;
    # anything else (lists, ints, dates, str subclasses) takes the general road.
    if all(type(key) is str and (value is None or type(value) is str) for key, value in items):
        try:
            return dict(_kept_strings(items, default))  # a copy: the caller owns its result
        except _NotKept as not_kept:
            return not_kept.wire_data
    return _normalize_general(items, default)


def _normalize_strings(
    items: tuple[tuple[str, str | None], ...], default: str | None
) -> dict[str, object]:
    """:func:`normalize_user_data` for string keys and values; raises :class:`_NotKept` with
    the result when it must not be kept (a value was dropped, or a key came twice)."""
    single: dict[str, tuple[str, str]] = {}
    for key, value in items:
        wire = _WIRE_OF.get(key)
        if wire is None:
            raise ValueError(f"unknown user_data key {key!r}; accepted keys: {_ACCEPTED_KEYS}")
        if value is None:
            continue
        if wire in single:  # one key under two names: the general road, not kept
            raise _NotKept(_normalize_general(items, default))
        single[wire] = (key, value)
    return _normalize_single(single, default)


class _NotKept(Exception):
    """A result of :func:`_normalize_strings` that is not to be kept, carried to the caller."""

    def __init__(self, wire_data: dict[str, object]) -> None:
        super().__init__()
        self.wire_data = wire_data


# A visitor's events repeat their user data (PageView, AddToCart, Purchase): the results of
# the last thousand, by (key, value) pairs and default country. Only exact str keys and values
# come here, so a hit is equal text, not merely an equal value (1 == True). The rules are pure;
# a result with a drop is not kept, so its warning is logged each time. ~2.5 KB an entry.
_kept_strings = functools.lru_cache(maxsize=1024)(_normalize_strings)


def _normalize_general(
    items: tuple[tuple[str, object], ...], default: str | None
) -> dict[str, object]:
    """:func:`normalize_user_data` for any values: lists, ints, dates, a key under two names."""
    collected: dict[str, list[tuple[str, int, object]]] = {}
    multi: set[str] = set()
    for key, value in items:
        wire = USER_DATA_KEYS.get(key) if isinstance(key, str) else None
        if wire is None:
            raise ValueError(f"unknown user_data key {key!r}; accepted keys: {_ACCEPTED_KEYS}")
        if value is None:
            continue
        if wire in collected:
            multi.add(wire)
        slot = collected.setdefault(wire, [])
        if isinstance(value, (list, tuple)):
            if wire not in HASHED_KEYS:
                _check_type(key, wire, value)
            multi.add(wire)
            for index, item in enumerate(value):
                if item is not None:
                    _check_type(key, wire, item, f"[{index}]")
                    slot.append((key, index, item))
        else:
            _check_type(key, wire, value)
            slot.append((key, -1, value))

    # Country goes first: the state and zip rules depend on whether the user is in the US,
    # phone numbers on the country.
    countries = _normalized("country", collected.get("country"), _NOWHERE)
    place = _place(cast("list[str]", countries), default)

    wire_data: dict[str, object] = {}
    for wire in WIRE_KEYS:
        items_of_key = collected.get(wire)
        if not items_of_key:
            continue
        values = countries if wire == "country" else _normalized(wire, items_of_key, place)
        if values:
            wire_data[wire] = values if wire in multi else values[0]
    return wire_data


def _default_country(name: str | None) -> str | None:
    if name is None:
        return None
    code = _COUNTRIES.get(_fold(name))
    if code is None:
        raise ValueError(f"default_country must be an ISO 3166-1 country code; got {name!r}")
    return code


# No country given: nothing known. A given country is hashed by the rules first, as this.
_NOWHERE = _Place(None, None)


def _place(country_hashes: list[str], default: str | None) -> _Place:
    """The user's place, from the hashes of the countries given (distinct) and the default."""
    if not country_hashes:
        return _Place(None, default)
    # Several countries: the US rules apply if one is the US; a phone's is ambiguous.
    alone = _COUNTRY_OF_HASH.get(country_hashes[0]) if len(country_hashes) == 1 else None
    return _Place(_US_HASH in country_hashes, alone)


def _normalize_single(single: dict[str, tuple[str, str]], default: str | None) -> dict[str, object]:
    """:func:`normalize_user_data` for one string value per wire key (wire -> key, value);
    raises :class:`_NotKept` with the result if a value was dropped."""
    country = single.get("country")
    country_hash = _one("country", *country, _NOWHERE) if country is not None else None
    place = _place([country_hash] if isinstance(country_hash, str) else [], default)
    wire_data: dict[str, object] = {}
    dropped = False
    for wire in WIRE_KEYS:
        item = single.get(wire)
        if item is None:
            continue
        result = country_hash if wire == "country" else _one(wire, item[0], item[1], place)
        if result is _DROPPED:
            dropped = True
        elif result is not None:
            wire_data[wire] = result
    if dropped:
        raise _NotKept(wire_data)
    return wire_data


#: What :func:`_one` answers for a value it dropped (and logged); None is a blank value.
_DROPPED = object()


def _one(wire: str, key: str, value: str, place: _Place) -> object | None:
    try:
        if wire not in HASHED_KEYS:
            return _plain(wire, value)
        if len(value) <= _CACHED_LENGTH:
            return _hashed_text(wire, value, place)
        return _hashed(wire, value, place)
    except _Drop as drop:
        _log.warning("user_data[%r]%s dropped: %s", key, "", drop.reason)
        return _DROPPED


# A visitor's events repeat their user data (PageView, AddToCart, Purchase): the hashes of the
# last few thousand values are kept, by (wire key, raw text, the user's _Place). The rules are pure,
# so a hit is what the rules would give; a dropped value raises and is not kept (its warning
# is logged each time). Long texts are not kept, so the cache stays small (~1 MB at most).
_CACHED_LENGTH = 128
_hashed_text = functools.lru_cache(maxsize=4096)(_hashed)


def _normalized(
    wire: str, items: list[tuple[str, int, object]] | None, place: _Place
) -> list[object]:
    if not items:
        return []
    values: list[object] = []
    for key, index, value in items:
        try:
            result = _hashed(wire, value, place) if wire in HASHED_KEYS else _plain(wire, value)
        except _Drop as drop:
            where = "" if index < 0 else f"[{index}]"
            _log.warning("user_data[%r]%s dropped: %s", key, where, drop.reason)
            continue
        if result is not None and result not in values:
            values.append(result)
    return values

"""Meta's documented ``user_data`` normalisation and SHA-256 hashing.

Pure functions, no framework imports. :func:`normalize_user_data` turns the Python API's
``user_data`` mapping (Meta SDK long names or Meta's short wire keys) into the wire dict the
Conversions API wants: contact fields normalised by Meta's rules and SHA-256 hashed, technical
fields (IP, user agent, ``fbp``/``fbc``, ids) checked and kept as they are.

A programming error (unknown key, value of the wrong type) raises :class:`ValueError`. A value
that is merely unusable (a malformed email, an impossible date of birth) is dropped with a
``WARNING`` on the ``pixelmirror`` logger that names the key and the reason, never the value:
it is personal data.

The rules of each field are in :mod:`pixelmirror.user_fields`; this module checks the mapping
and its types, applies them, logs the drops and keeps recent results.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import logging
from collections.abc import Iterator, Mapping
from datetime import date
from json.encoder import encode_basestring
from typing import cast

from .meta import HASHED_KEYS, USER_DATA_KEYS, WIRE_KEYS
from .user_fields import (
    NOWHERE,
    Drop,
    Place,
    country_code,
    hashed,
    place_of,
    plain,
    sha256_hex,
)

__all__ = [
    "WireUserData",
    "default_country_code",
    "normalize_user_data",
    "own_visitor_wire",
    "sha256_hex",
    "wire_user_data",
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
    return dict(wire_user_data(user_data, default_country=default_country).data)


class WireUserData:
    """Normalised user data as :func:`wire_user_data` gives it: ``data``, the wire dict, may be
    shared with other callers and must not be changed; :meth:`text` is its JSON."""

    __slots__ = ("_text", "data")

    def __init__(self, data: dict[str, object]) -> None:
        self.data = data
        self._text: str | None = None

    def text(self) -> str | None:
        """``data`` as compact JSON (what the events' encoder writes of it), made on the first
        call and kept; None unless every value is a plain string (the caller encodes those)."""
        if self._text is None:
            fields = []
            for key, value in self.data.items():
                if type(value) is not str:
                    return None
                fields.append(f'"{key}":{encode_basestring(value)}')  # wire keys need no escape
            self._text = "{" + ",".join(fields) + "}"
        return self._text


def wire_user_data(
    user_data: Mapping[str, object], *, default_country: str | None = None
) -> WireUserData:
    """:func:`normalize_user_data`'s result, without a copy and with its JSON kept: for
    callers that only read it (the events)."""
    default = default_country_code(default_country)
    items = tuple(user_data.items())
    # The usual call (every key and value a plain string) is kept whole, see _kept_strings;
    # anything else (lists, ints, dates, str subclasses) takes the general road.
    if all(type(key) is str and (value is None or type(value) is str) for key, value in items):
        try:
            return _kept_strings(items, default)
        except _NotKept as not_kept:
            return WireUserData(not_kept.wire_data)
    return WireUserData(_normalize_general(items, default))


def own_visitor_wire(
    external_id: str,
    client_ip: str | None,
    user_agent: str | None,
    fbc: str | None,
    fbp: str | None,
) -> tuple[str, tuple[str, ...]]:
    """The JSON text and wire keys of a visitor's own user data, what :func:`wire_user_data`
    gives (and its text writes) for ``{external_id, client_ip_address, client_user_agent,
    fbp, fbc}``, for values known to be in wire form, as ``Identity`` makes them:
    a lowercase SHA-256 hex id, an IP as ``Proxies`` writes it, a stripped User-Agent that is
    not blank, ``_fbp`` / ``_fbc`` that passed their patterns (or None each). No rule is run:
    each would give its value back."""
    # In WIRE_KEYS order, in one format. A hex id and a canonical IP need no escape.
    ip = "" if client_ip is None else f',"client_ip_address":"{client_ip}"'
    agent = ""
    if user_agent is not None:
        kept = _AGENTS.get(user_agent)
        if kept is not None:
            agent = kept
        else:
            agent = ',"client_user_agent":' + encode_basestring(user_agent)
            if len(user_agent) <= _AGENT_KEPT_LENGTH:
                if len(_AGENTS) >= _AGENTS_KEPT:
                    _AGENTS.clear()
                _AGENTS[user_agent] = agent
    fb_c = "" if fbc is None else ',"fbc":' + encode_basestring(fbc)
    fb_p = "" if fbp is None else ',"fbp":' + encode_basestring(fbp)
    keys = _OWN_KEYS[client_ip is None, user_agent is None, fbc is None, fbp is None]
    return f'{{"external_id":"{external_id}"{ip}{agent}{fb_c}{fb_p}}}', keys


# The wire keys of a visitor's own user data, by which of its optional values are absent.
_OWN_KEYS: dict[tuple[bool, bool, bool, bool], tuple[str, ...]] = {
    absent: (
        "external_id",
        *(
            key
            for key, gone in zip(
                ("client_ip_address", "client_user_agent", "fbc", "fbp"), absent, strict=True
            )
            if not gone
        ),
    )
    for absent in cast(
        "Iterator[tuple[bool, bool, bool, bool]]", itertools.product((False, True), repeat=4)
    )
}


# Visitors share a few hundred browsers: each User-Agent's JSON, written once (a blank one,
# which the rule drops, is never kept).
_AGENTS_KEPT = 512
# Longer than any browser's: written each time rather than kept (the client chooses it).
_AGENT_KEPT_LENGTH = 1024
_AGENTS: dict[str, str] = {}


def _normalize_strings(
    items: tuple[tuple[str, str | None], ...], default: str | None
) -> WireUserData:
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
    return WireUserData(_normalize_single(single, default))


class _NotKept(Exception):
    """A result of :func:`_normalize_strings` that is not to be kept, carried to the caller."""

    def __init__(self, wire_data: dict[str, object]) -> None:
        super().__init__()
        self.wire_data = wire_data


# A visitor's events repeat their user data (PageView, AddToCart, Purchase): the results of
# the last thousand, by (key, value) pairs and default country. Only exact str keys and values
# come here, so a hit is equal text, not merely an equal value (1 == True). The rules are pure;
# a result with a drop is not kept, so its warning is logged each time. ~3.5 KB an entry
# with its JSON.
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
    countries = _normalized("country", collected.get("country"), NOWHERE)
    place = place_of(cast("list[str]", countries), default)

    wire_data: dict[str, object] = {}
    for wire in WIRE_KEYS:
        items_of_key = collected.get(wire)
        if not items_of_key:
            continue
        values = countries if wire == "country" else _normalized(wire, items_of_key, place)
        if values:
            wire_data[wire] = values if wire in multi else values[0]
    return wire_data


@functools.lru_cache(maxsize=64)
def default_country_code(name: str | None) -> str | None:
    """The code of ``default_country``, or the ValueError normalising raises for an unknown
    one; a site has one, each event asks (an error is not kept: raised every time)."""
    if name is None:
        return None
    code = country_code(name)
    if code is None:
        raise ValueError(f"default_country must be an ISO 3166-1 country code; got {name!r}")
    return code


def _normalize_single(single: dict[str, tuple[str, str]], default: str | None) -> dict[str, object]:
    """:func:`normalize_user_data` for one string value per wire key (wire -> key, value);
    raises :class:`_NotKept` with the result if a value was dropped."""
    country = single.get("country")
    country_hash = _one("country", *country, NOWHERE) if country is not None else None
    place = place_of([country_hash] if isinstance(country_hash, str) else [], default)
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


def _one(wire: str, key: str, value: str, place: Place) -> object | None:
    try:
        if wire not in HASHED_KEYS:
            return plain(wire, value)
        if len(value) <= _CACHED_LENGTH:
            return _hashed_text(wire, value, place)
        return hashed(wire, value, place)
    except Drop as drop:
        _log.warning("user_data[%r]%s dropped: %s", key, "", drop.reason)
        return _DROPPED


# A visitor's events repeat their user data (PageView, AddToCart, Purchase): the hashes of the
# last few thousand values are kept, by (wire key, raw text, the user's Place). The rules are pure,
# so a hit is what the rules would give; a dropped value raises and is not kept (its warning
# is logged each time). Long texts are not kept, so the cache stays small (~1 MB at most).
_CACHED_LENGTH = 128
_hashed_text = functools.lru_cache(maxsize=4096)(hashed)


def _normalized(
    wire: str, items: list[tuple[str, int, object]] | None, place: Place
) -> list[object]:
    if not items:
        return []
    values: list[object] = []
    for key, index, value in items:
        try:
            result = hashed(wire, value, place) if wire in HASHED_KEYS else plain(wire, value)
        except Drop as drop:
            where = "" if index < 0 else f"[{index}]"
            _log.warning("user_data[%r]%s dropped: %s", key, where, drop.reason)
            continue
        if result is not None and result not in values:
            values.append(result)
    return values

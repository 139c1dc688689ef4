"""Server events: validation at the API boundary and the payload bytes, made once.

A :class:`ServerEvent` is what the outbox stores and the dispatcher sends: the routing facts
(destination, pixel, test code, ids, time) beside the event's JSON, serialised exactly once,
when the event is created. Every retry and every outbox backend ships those same bytes, so
``event_id`` and ``event_time`` cannot drift between attempts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple, TypedDict, cast

from pixelmirror._urandom import Pool
from pixelmirror.meta import (
    ACTION_SOURCES,
    CURRENCY,
    DAY,
    LDU_COUNTRIES,
    LDU_STATES,
    LIMITED_DATA_USE,
    MAX_EVENT_NAME_LENGTH,
    MAX_FUTURE_SKEW,
    NEEDS_VALUE_AND_CURRENCY,
    carries_fbclid,
    identifies_user,
    match_faults,
    max_age,
)
from pixelmirror.normalize import WireUserData, wire_user_data


def new_event_id() -> str:
    """A fresh, unguessable event id (the dedup key shared by the pixel and CAPI).

    ``uuid.uuid4().hex``: 16 random bytes with the version and variant bits set as ``uuid4``
    sets them, drawn from a pool (every request makes one, and a system call per id costs
    more than the id).
    """
    return _ids.draw()


def _uuid4_hex(raw: bytes) -> str:
    return f"{(int.from_bytes(raw, 'big') & _UUID4_CLEAR) | _UUID4_SET:032x}"


# UUID version 4 (bits 76-79) and the RFC 4122 variant (bits 62-63), as uuid.UUID sets them.
_UUID4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID4_SET = (0x8000 << 48) | (4 << 76)
_ids = Pool(_uuid4_hex, size=16)


#: The destination of events that name none: Meta's Conversions API.
META = "meta"


class BatchKey(NamedTuple):
    """Events share a request only when they share a destination, a pixel and a test code."""

    destination: str
    pixel_id: str
    test_event_code: str | None


class MatchSignature(NamedTuple):
    """What match quality counts of a delivered event: its name, its ``user_data`` wire keys
    and its :data:`~pixelmirror.meta.MATCH_FAULTS`. Names only, never a value."""

    event_name: str
    keys: tuple[str, ...]
    faults: tuple[str, ...]


def match_signature(
    event_name: str, wire_keys: Iterable[str], action_source: object, event_source_url: object
) -> MatchSignature:
    """The :class:`MatchSignature` of an event, shared with the events that have the same
    one (a few per shop), so a queued event holds a reference, not a copy."""
    keys = tuple(wire_keys)
    website, fbclid = action_source == "website", carries_fbclid(event_source_url)
    known = (event_name, keys, website, fbclid)
    signature = _signatures.get(known)
    if signature is None:
        faults = match_faults(event_name, keys, website=website, fbclid=fbclid)
        signature = MatchSignature(event_name, keys, faults)
        if len(_signatures) < _MAX_SIGNATURES:
            _signatures[known] = signature
    return signature


# By what decides them. Bounded: custom event names are the caller's, and a signature past
# the bound is only unshared.
_MAX_SIGNATURES = 4096
_signatures: dict[tuple[str, tuple[str, ...], bool, bool], MatchSignature] = {}


def signature_text(signature: MatchSignature) -> str:
    """How a durable outbox stores ``signature`` beside the event: the JSON of ``[event
    name, keys, faults]``, safe for any event name."""
    text = _texts.get(signature)
    if text is None:
        text = json.dumps(signature, separators=(",", ":"))
        if len(_texts) < _MAX_SIGNATURES:
            _texts[signature] = text
    return text


def stored_signature(text: str | None) -> MatchSignature | None:
    """The signature :func:`signature_text` wrote, or None (none stored, or not ours): the
    dispatcher then reads it from the payload. A shop has a few, each parsed once."""
    if text is None:
        return None
    signature = _parsed.get(text)
    if signature is None:
        try:
            name, keys, faults = json.loads(text)
        except (ValueError, TypeError):
            return None
        if not (isinstance(name, str) and _strings(keys) and _strings(faults)):
            return None
        signature = MatchSignature(name, tuple(keys), tuple(faults))
        if len(_parsed) < _MAX_SIGNATURES:
            _parsed[text] = signature
    return signature


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# Both ways, bounded as _signatures is.
_texts: dict[MatchSignature, str] = {}
_parsed: dict[str, MatchSignature] = {}


class EventOptions(TypedDict, total=False):
    """The optional keywords of :meth:`ServerEvent.create`, for callers that pass them on
    (``PixelMirror.send``) without repeating them."""

    custom_data: Mapping[str, object] | None
    event_time: int | float | None
    event_id: str | None
    event_source_url: str | None
    referrer_url: str | None
    opt_out: bool
    data_processing_options: Sequence[str] | None
    data_processing_options_country: int | None
    data_processing_options_state: int | None


@dataclass(frozen=True, slots=True, init=False)
class ServerEvent:
    """One Conversions API event, validated, normalised, hashed and serialised.

    Build it with :meth:`create`; the constructor trusts its arguments (outboxes use it to
    rebuild stored events). ``payload`` is the event's JSON object as UTF-8 bytes, ready to
    be joined into a request body.
    """

    pixel_id: str
    event_id: str
    event_name: str
    event_time: int
    action_source: str
    payload: bytes
    test_event_code: str | None = None
    #: Which sink delivers it (see :mod:`pixelmirror.delivery`).
    destination: str = META
    #: What match quality counts of it once delivered, known when it is made and stored with
    #: it; None when rebuilt from a row or entry written without it (the dispatcher then
    #: reads it from the payload).
    match: MatchSignature | None = field(default=None, compare=False, repr=False)

    def __new__(
        cls,
        pixel_id: str,
        event_id: str,
        event_name: str,
        event_time: int,
        action_source: str,
        payload: bytes,
        test_event_code: str | None = None,
        destination: str = META,
        match: MatchSignature | None = None,
    ) -> ServerEvent:
        # Written as a plain slots object, then made a ServerEvent (the same slots in the same
        # order: the layouts match). A frozen dataclass writes each field through
        # object.__setattr__ or the slot's descriptor, twice the cost, and every page view and
        # every claimed event makes one.
        event: Any = _ServerEventFields()
        event.pixel_id = pixel_id
        event.event_id = event_id
        event.event_name = event_name
        event.event_time = event_time
        event.action_source = action_source
        event.payload = payload
        event.test_event_code = test_event_code
        event.destination = destination
        event.match = match
        event.__class__ = cls
        return cast(ServerEvent, event)

    def __reduce__(self) -> tuple[type[ServerEvent], tuple[object, ...]]:
        # Rebuilt through __new__, which takes the fields (pickle's default calls it bare).
        return type(self), tuple(getattr(self, name) for name in self.__slots__)

    @property
    def expires_at(self) -> int:
        """Unix time after which Meta would reject this event (and its whole batch)."""
        return self.event_time + max_age(self.action_source)

    @property
    def batch_key(self) -> BatchKey:
        # tuple.__new__ straight: the NamedTuple's own __new__ is a Python call, and an
        # outbox asks every event it takes for its key.
        return tuple.__new__(BatchKey, (self.destination, self.pixel_id, self.test_event_code))

    @classmethod
    def create(
        cls,
        event_name: str,
        *,
        pixel_id: str,
        action_source: str,
        user_data: Mapping[str, object],
        custom_data: Mapping[str, object] | None = None,
        event_time: int | float | None = None,
        event_id: str | None = None,
        event_source_url: str | None = None,
        referrer_url: str | None = None,
        opt_out: bool = False,
        data_processing_options: Sequence[str] | None = None,
        data_processing_options_country: int | None = None,
        data_processing_options_state: int | None = None,
        test_event_code: str | None = None,
        default_country: str | None = None,
        now: float | None = None,
    ) -> ServerEvent:
        """Validate the arguments and build the event.

        Raises :class:`ValueError` with a message naming the argument for anything Meta would
        reject. A ``user_data`` value that cannot be normalised is dropped with a logged
        warning (see :func:`pixelmirror.normalize.normalize_user_data`); only if nothing
        identifying is left does this raise. ``default_country`` completes phone numbers
        written without a country code when ``user_data`` names no country.
        """
        check_event_name(event_name)
        if action_source not in ACTION_SOURCES:
            raise ValueError(
                f"action_source must be one of {', '.join(sorted(ACTION_SOURCES))}; "
                f"got {action_source!r}"
            )
        current = time.time() if now is None else now
        when = _check_event_time(event_time, action_source, current)
        if event_id is None:
            event_id = new_event_id()
        elif not isinstance(event_id, str) or not event_id or len(event_id) > 256:
            raise ValueError(
                f"event_id must be a non-empty string of at most 256 characters; got {event_id!r}"
            )

        user = wire_user_data(user_data, default_country=default_country)
        if action_source == "website":
            if not event_source_url:
                raise ValueError("event_source_url is required when action_source is 'website'")
            if "client_user_agent" not in user.data:
                raise ValueError(
                    "user_data['client_user_agent'] is required when action_source is 'website'"
                )
        if not identifies_user(user.data):
            raise ValueError(
                "user_data does not identify the user well enough for Meta "
                f"(usable keys after normalisation: {sorted(user.data) or 'none'}); "
                "add an email, phone, external_id, fbp, fbc or client IP"
            )

        # What follows user_data in the body.
        rest: dict[str, Any] = {}
        for name, url in (("event_source_url", event_source_url), ("referrer_url", referrer_url)):
            if url is not None:
                rest[name] = _check_url(name, url)
        if custom_data:
            rest["custom_data"] = _check_custom_data(event_name, custom_data)
        elif event_name in NEEDS_VALUE_AND_CURRENCY:
            raise ValueError(f"a {event_name} needs custom_data with value and currency")
        if opt_out:
            rest["opt_out"] = True
        if data_processing_options is not None:
            rest.update(
                _processing_options(
                    data_processing_options,
                    data_processing_options_country,
                    data_processing_options_state,
                )
            )
        return cls(
            pixel_id=pixel_id,
            event_id=event_id,
            event_name=event_name,
            event_time=when,
            action_source=action_source,
            payload=_payload(event_name, when, event_id, action_source, user, rest),
            test_event_code=test_event_code or None,
            match=match_signature(event_name, user.data, action_source, event_source_url),
        )


def slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """How a hand-written ``__init__`` of a frozen slots dataclass writes field ``name``."""
    setter: Callable[[Any, Any], None] = getattr(cls, name).__set__
    return setter


class _ServerEventFields:
    """A ServerEvent's slots, writable: what :meth:`ServerEvent.__new__` fills in."""

    __slots__ = ServerEvent.__slots__


def _payload(
    event_name: str,
    when: int,
    event_id: str,
    action_source: str,
    user: WireUserData,
    rest: Mapping[str, Any],
) -> bytes:
    """The event's JSON: ``_dump`` of ``{event_name, event_time, event_id, action_source,
    user_data, **rest}``, with the user data's kept text written in straight when it has one
    (a visitor's events share it)."""
    user_text = user.text()
    if user_text is None:
        head = {
            "event_name": event_name,
            "event_time": when,
            "event_id": event_id,
            "action_source": action_source,
            "user_data": user.data,
        }
        return _dump({**head, **rest})
    tail = _dump(rest)  # b"{}" or b'{"event_source_url":...}'
    return b"".join(
        (
            f'{{"event_name":{encode_string(event_name)},"event_time":{when},'
            f'"event_id":{encode_string(event_id)},'
            f'"action_source":{encode_string(action_source)},"user_data":{user_text}'.encode(),
            b"}" if tail == b"{}" else b"," + tail[1:],
        )
    )


# The encoder's own string escaping (ensure_ascii off), for JSON written straight.
encode_string = json.encoder.encode_basestring


def _dump(body: Mapping[str, Any]) -> bytes:
    try:
        text = ENCODER.encode(body)
    except ValueError as exc:  # NaN or infinity somewhere in the data
        raise ValueError(f"event data must be finite numbers: {exc}") from None
    except TypeError as exc:
        raise ValueError(f"event data must be JSON values: {exc}") from None
    return text.encode()


def json_default(value: object) -> object:
    """The one JSON policy for event data, in the page and in the server copy alike.

    Decimals become floats, mappings (a ``MappingProxyType``, say) dicts, sets sorted lists
    (set order varies between processes); anything else JSON cannot carry is a TypeError.
    """
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
# default=json_default), with the encoder made once instead of on every call.
ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=json_default
)


#: The default of a hand-written ``__init__``'s parameter whose field has a
#: ``default_factory``: that field gets a fresh value.
_FRESH: Any = object()


@dataclass(frozen=True, slots=True, init=False)
class BrowserEvent:
    """One event fired in the page, deduplicated against its server copy by ``event_id``.

    The one shape of a browser event on its way to the page: what ``@track`` makes, what
    the carry cookie holds over a redirect, what the events header and the beacon's answer
    announce and what the snippet renders. ``custom_data`` is rendered into the HTML: put
    only browser-visible data here. ``pixel_id`` None fires for every pixel of the page; a
    pixel id restricts the event to that pixel (``trackSingle``).
    """

    name: str
    event_id: str = field(default_factory=new_event_id)
    custom_data: Mapping[str, object] = field(default_factory=dict)
    pixel_id: str | None = None

    def __init__(
        self,
        name: str,
        event_id: str = _FRESH,
        custom_data: Mapping[str, object] = _FRESH,
        pixel_id: str | None = None,
    ) -> None:
        # Each slot written through its descriptor, as ServerEvent's: every page makes one.
        _set_name(self, name)
        _set_browser_event_id(self, new_event_id() if event_id is _FRESH else event_id)
        _set_custom_data(self, {} if custom_data is _FRESH else custom_data)
        _set_pixel_id_of_browser(self, pixel_id)

    def announced(self, *, with_data: bool = True) -> dict[str, object]:
        """The event for the page's ``window.pixelmirror.fire``: ``{event, eventID,
        custom_data?, pixel_id?}``."""
        announced: dict[str, object] = {"event": self.name, "eventID": self.event_id}
        if with_data and self.custom_data:
            announced["custom_data"] = self.custom_data
        if self.pixel_id:
            announced["pixel_id"] = self.pixel_id
        return announced


_set_name = slot_setter(BrowserEvent, "name")
_set_browser_event_id = slot_setter(BrowserEvent, "event_id")
_set_custom_data = slot_setter(BrowserEvent, "custom_data")
_set_pixel_id_of_browser = slot_setter(BrowserEvent, "pixel_id")


def check_event_name(event_name: object) -> None:
    """Raise ValueError unless ``event_name`` is a name Meta accepts."""
    if not isinstance(event_name, str) or not event_name.strip():
        raise ValueError(f"event_name must be a non-empty string; got {event_name!r}")
    if len(event_name) > MAX_EVENT_NAME_LENGTH:
        raise ValueError(
            f"event_name must be at most {MAX_EVENT_NAME_LENGTH} characters; got {len(event_name)}"
        )


def _check_event_time(event_time: int | float | None, action_source: str, now: float) -> int:
    if event_time is None:
        return int(now)
    if isinstance(event_time, bool) or not isinstance(event_time, (int, float)):
        raise ValueError(f"event_time must be Unix seconds (int); got {event_time!r}")
    if not math.isfinite(event_time):
        raise ValueError(f"event_time must be finite; got {event_time!r}")
    when = int(event_time)
    if when > now + MAX_FUTURE_SKEW:
        raise ValueError(
            f"event_time {when} is in the future (now {int(now)}); event_time is Unix seconds, "
            "not milliseconds"
        )
    if when < now - max_age(action_source):
        days = max_age(action_source) // DAY
        raise ValueError(
            f"event_time {when} is more than {days} days old; Meta rejects such events "
            f"for action_source {action_source!r}"
        )
    return when


def _check_url(name: str, url: object) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"{name} must be an absolute http(s) URL; got {url!r}")
    return url


def _check_custom_data(event_name: str, custom_data: Mapping[str, object]) -> Mapping[str, object]:
    if not isinstance(custom_data, Mapping):
        raise ValueError(f"custom_data must be a mapping; got {type(custom_data).__name__}")
    value = custom_data.get("value")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
            raise ValueError(f"custom_data['value'] must be a number; got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"custom_data['value'] must be finite; got {value!r}")
    currency = custom_data.get("currency")
    if currency is not None and not (isinstance(currency, str) and CURRENCY.fullmatch(currency)):
        raise ValueError(
            f"custom_data['currency'] must be a 3-letter ISO 4217 code; got {currency!r}"
        )
    if event_name in NEEDS_VALUE_AND_CURRENCY and (value is None or currency is None):
        raise ValueError(f"a {event_name} needs custom_data['value'] and custom_data['currency']")
    return custom_data


def _processing_options(
    options: Sequence[str], country: int | None, state: int | None
) -> dict[str, object]:
    if isinstance(options, str) or any(option != LIMITED_DATA_USE for option in options):
        raise ValueError(
            f"data_processing_options must be [] or [{LIMITED_DATA_USE!r}]; got {options!r}"
        )
    if not options:
        return {"data_processing_options": []}
    country = 0 if country is None else country
    state = 0 if state is None else state
    if country not in LDU_COUNTRIES or state not in LDU_STATES:
        raise ValueError(
            f"data_processing_options_country must be {_either(LDU_COUNTRIES)} and "
            f"data_processing_options_state {_either(LDU_STATES)}; got {country!r}, {state!r}"
        )
    return {
        "data_processing_options": [LIMITED_DATA_USE],
        "data_processing_options_country": country,
        "data_processing_options_state": state,
    }


def _either(codes: Sequence[int]) -> str:
    return " or ".join(map(str, codes))

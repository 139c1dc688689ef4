"""Meta's documented Conversions API rules, as the fake keeps them.

This module is deliberately an independent copy of the rules pixelmirror's production code
follows (``meta.py``, ``events.py``, ``user_fields.py``, ``config.py``, ``accounts.py``): it
imports none of them. A fake that borrowed production's rules would agree with production's
mistakes; with its own copy, a rule production gets wrong makes the fake refuse what
production sends.

Everything here is pure: constants, and :func:`check_event`, which raises
:class:`EventRejected` for the first rule an event breaks.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Collection
from typing import Any

DAY = 86_400

#: Meta takes at most 1,000 events in one request.
MAX_EVENTS_PER_REQUEST = 1000
#: Custom event names are at most 50 characters (the pixel's rule, which CAPI shares).
MAX_EVENT_NAME_LENGTH = 50
#: An event more than 7 days old makes Meta refuse its whole request...
MAX_EVENT_AGE = 7 * DAY
#: ...except a ``physical_store`` one, which may be up to 62 days old.
MAX_PHYSICAL_STORE_AGE = 62 * DAY
#: How far ahead of the fake's clock an ``event_time`` may be. Meta refuses event times in
#: the future; how much clock drift it tolerates is not documented, so this is the fake's choice.
MAX_FUTURE_SKEW = 10 * 60

#: The ``action_source`` values Meta documents.
ACTION_SOURCES = frozenset(
    {
        "website",
        "email",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)

#: ``user_data`` keys Meta requires as SHA-256 hex of the normalised value (or lists of it).
#: ``external_id`` is not among them: Meta recommends hashing it but accepts it as sent.
HASHED_USER_DATA_KEYS = frozenset({"em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country"})
#: ``user_data`` keys Meta wants as they are, never hashed.
NEVER_HASHED_USER_DATA_KEYS = frozenset(
    {
        "client_ip_address",
        "client_user_agent",
        "fbc",
        "fbp",
        "subscription_id",
        "lead_id",
        "fb_login_id",
    }
)
#: Meta refuses an event whose user data is only one of these sets, or a subset of one.
INSUFFICIENT_USER_DATA_SETS: tuple[frozenset[str], ...] = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)

SUBCODE_OBJECT_NOT_FOUND = 33
SUBCODE_TIMESTAMP_TOO_OLD = 2804003
SUBCODE_TIMESTAMP_IN_FUTURE = 2804004
#: Meta's subcode for this case is not documented; this one is the fake's choice.
SUBCODE_PURCHASE_VALUE_CURRENCY = 2804008
SUBCODE_INVALID_HASHED_DATA = 2804019
SUBCODE_INSUFFICIENT_USER_DATA = 2804050

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CURRENCY = re.compile(r"[A-Za-z]{3}")  # ISO 4217: three letters
_LETTER = re.compile(r"[A-Za-z]")
# Never-hashed ids Meta's SDK types as strings but JSON clients may send as numbers.
_ID_KEYS = frozenset({"subscription_id", "lead_id", "fb_login_id"})


class EventRejected(Exception):
    """An event breaks one of Meta's rules: the title and detail Graph's error gives."""

    def __init__(self, title: str, detail: str, subcode: int | None = None) -> None:
        super().__init__(detail)
        self.title = title
        self.detail = detail
        self.subcode = subcode


def max_age(action_source: str) -> int:
    """How many seconds old an event with this ``action_source`` may be."""
    return MAX_PHYSICAL_STORE_AGE if action_source == "physical_store" else MAX_EVENT_AGE


def identifies_user(keys: Collection[str]) -> bool:
    """Whether ``user_data`` with these (non-empty) keys is enough for Meta to take the event."""
    present = frozenset(keys)
    return bool(present) and not any(present <= weak for weak in INSUFFICIENT_USER_DATA_SETS)


def partner_agent_ok(agent: str) -> bool:
    """Meta's rule for ``partner_agent``: under 23 characters, at least two letters."""
    return len(agent) < 23 and len(_LETTER.findall(agent)) >= 2


def check_event(event: object, now: float) -> None:
    """Raise :class:`EventRejected` for the first of Meta's rules ``event`` breaks.

    :param event: one element of the request's ``data``, as decoded from JSON.
    :param now: the current Unix time, for the ``event_time`` window.
    """
    if not isinstance(event, dict):
        raise EventRejected("Invalid Event", "each element of data must be an object")
    name = event.get("event_name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_EVENT_NAME_LENGTH:
        raise EventRejected(
            "Invalid Event Name",
            f"event_name must be a non-empty string of at most {MAX_EVENT_NAME_LENGTH} characters",
        )
    source = event.get("action_source")
    if not isinstance(source, str) or source not in ACTION_SOURCES:
        raise EventRejected(
            "Invalid Action Source",
            f"action_source must be one of {', '.join(sorted(ACTION_SOURCES))}",
        )
    _check_time(event.get("event_time"), source, now)
    if source == "website":
        url = event.get("event_source_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise EventRejected(
                "Missing Event Source URL", "website events need an http(s) event_source_url"
            )
    if "user_data" not in event:
        raise EventRejected("Missing User Data", "user_data is required")
    user_data = event["user_data"]
    if not isinstance(user_data, dict):
        raise EventRejected("Invalid User Data", "user_data must be an object")
    _check_user_data(user_data, source)
    custom_data = event.get("custom_data", {})
    if not isinstance(custom_data, dict):
        raise EventRejected("Invalid Custom Data", "custom_data must be an object")
    if name == "Purchase":
        _check_purchase(custom_data)
    if "event_id" in event:
        event_id = event["event_id"]
        if not isinstance(event_id, str) or not event_id:
            raise EventRejected("Invalid Event ID", "event_id must be a non-empty string")


def _check_time(event_time: object, source: str, now: float) -> None:
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        raise EventRejected(
            "Invalid Event Time", "event_time must be an integer Unix timestamp in seconds"
        )
    oldest = max_age(source)
    if now - event_time > oldest:
        raise EventRejected(
            "Event Timestamp Too Old",
            f"event_time {event_time} is more than {oldest // DAY} days in the past",
            SUBCODE_TIMESTAMP_TOO_OLD,
        )
    if event_time - now > MAX_FUTURE_SKEW:
        raise EventRejected(
            "Event Timestamp In The Future",
            f"event_time {event_time} is more than {MAX_FUTURE_SKEW // 60} minutes in the "
            "future (milliseconds instead of seconds?)",
            SUBCODE_TIMESTAMP_IN_FUTURE,
        )


def _check_user_data(user_data: dict[str, Any], source: str) -> None:
    for key in sorted(HASHED_USER_DATA_KEYS.intersection(user_data)):
        if not _is_hashed(user_data[key]):
            # The value stays out of the message: it may be the very PII that leaked.
            raise EventRejected(
                "Invalid hashed data",
                f"user_data.{key} must be a SHA-256 hash (64 lowercase hex characters) or a "
                "list of them; raw personal data must not be sent",
                SUBCODE_INVALID_HASHED_DATA,
            )
    if "external_id" in user_data and not _is_strings(user_data["external_id"]):
        raise EventRejected(
            "Invalid User Data",
            "user_data.external_id must be a non-empty string (hashed or not) or a list of them",
        )
    if "client_ip_address" in user_data and not _is_ip(user_data["client_ip_address"]):
        raise EventRejected(
            "Invalid IP Address", "user_data.client_ip_address must be an IPv4 or IPv6 address"
        )
    for key in sorted(NEVER_HASHED_USER_DATA_KEYS.intersection(user_data) - {"client_ip_address"}):
        value = user_data[key]
        number = key in _ID_KEYS and isinstance(value, int) and not isinstance(value, bool)
        if not number and (not isinstance(value, str) or not value):
            raise EventRejected("Invalid User Data", f"user_data.{key} must be a non-empty string")
    if source == "website" and "client_user_agent" not in user_data:
        raise EventRejected("Missing User Agent", "website events need user_data.client_user_agent")
    present = [key for key, value in user_data.items() if value not in (None, "", [])]
    if not identifies_user(present):
        raise EventRejected(
            "Insufficient User Data",
            "The user data for this event is insufficient to match it to a person; "
            "send more customer information parameters",
            SUBCODE_INSUFFICIENT_USER_DATA,
        )


def _check_purchase(custom_data: dict[str, Any]) -> None:
    value = custom_data.get("value")
    currency = custom_data.get("currency")
    value_ok = (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )
    currency_ok = isinstance(currency, str) and _CURRENCY.fullmatch(currency) is not None
    if not (value_ok and currency_ok):
        raise EventRejected(
            "Invalid Purchase Data",
            "Purchase events need custom_data.value (a number) and custom_data.currency "
            "(a 3-letter ISO 4217 code)",
            SUBCODE_PURCHASE_VALUE_CURRENCY,
        )


def _is_hashed(value: object) -> bool:
    if isinstance(value, str):
        return _SHA256_HEX.fullmatch(value) is not None
    if isinstance(value, list) and value:
        return all(isinstance(v, str) and _SHA256_HEX.fullmatch(v) for v in value)
    return False


def _is_strings(value: object) -> bool:
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def _is_ip(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True

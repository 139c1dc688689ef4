"""Meta's documented rules, in one place: what the Conversions API and the pixel accept
(limits, event names, ``user_data`` keys), and what each of Meta's error answers asks a
sender to do.

Production modules read these tables (``events.py`` validates with them, ``config.py`` bounds
the batch size, ``snippet.py`` picks ``track`` or ``trackCustom``, ``normalize.py`` maps
``user_data`` keys, ``delivery/graph.py`` sorts answers, the facade's ``check()`` explains
them). The fake Graph API in ``pixelmirror.testing`` keeps its own copy on purpose, so that a
wrong rule here shows up as a refusal there rather than agreeing with itself.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Mapping
from types import MappingProxyType

__all__ = [
    "ACTION_SOURCES",
    "CURRENCY",
    "DAY",
    "HASHED_KEYS",
    "LDU_COUNTRIES",
    "LDU_STATES",
    "LIMITED_DATA_USE",
    "MATCH_FAULTS",
    "MAX_EVENTS_PER_REQUEST",
    "MAX_EVENT_AGE",
    "MAX_EVENT_NAME_LENGTH",
    "MAX_FUTURE_SKEW",
    "MAX_PHYSICAL_STORE_AGE",
    "NEEDS_VALUE_AND_CURRENCY",
    "STANDARD_EVENTS",
    "USER_DATA_KEYS",
    "WIRE_KEYS",
    "Fault",
    "advice",
    "carries_fbclid",
    "error_number",
    "fault",
    "identifies_user",
    "match_faults",
    "max_age",
]

# -- events ------------------------------------------------------------------------------

DAY = 86_400
#: Events Meta takes in one request.
MAX_EVENTS_PER_REQUEST = 1000
#: Meta rejects a whole request if any event in it is older than this (seconds).
MAX_EVENT_AGE = 7 * DAY
#: ...except offline store events, which get 62 days.
MAX_PHYSICAL_STORE_AGE = 62 * DAY
#: Clock skew tolerated for event times a little in the future.
MAX_FUTURE_SKEW = 10 * 60
MAX_EVENT_NAME_LENGTH = 50

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

#: Meta's standard event names; the pixel sends any other name with ``trackCustom``.
STANDARD_EVENTS: frozenset[str] = frozenset(
    {
        "PageView",
        "AddPaymentInfo",
        "AddToCart",
        "AddToWishlist",
        "CompleteRegistration",
        "Contact",
        "CustomizeProduct",
        "Donate",
        "FindLocation",
        "InitiateCheckout",
        "Lead",
        "Purchase",
        "Schedule",
        "Search",
        "StartTrial",
        "SubmitApplication",
        "Subscribe",
        "ViewContent",
    }
)

#: ``custom_data['currency']``: an ISO 4217 code.
CURRENCY = re.compile(r"[A-Za-z]{3}")
#: Events Meta refuses without ``custom_data`` ``value`` and ``currency``.
NEEDS_VALUE_AND_CURRENCY = frozenset({"Purchase"})


#: Limited Data Use, the one data processing option, and the codes that say where it applies:
#: 0 asks Meta to geolocate the user; country 1 is the USA, state 1000 California.
LIMITED_DATA_USE = "LDU"
LDU_COUNTRIES = (0, 1)
LDU_STATES = (0, 1000)


def max_age(action_source: str) -> int:
    """How old (seconds) an event with this ``action_source`` may be when Meta receives it."""
    return MAX_PHYSICAL_STORE_AGE if action_source == "physical_store" else MAX_EVENT_AGE


# -- user_data ---------------------------------------------------------------------------

# Meta rejects an event whose user data is only one of these sets or a subset of one.
_INSUFFICIENT_SETS: tuple[frozenset[str], ...] = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)


def identifies_user(wire_keys: Collection[str]) -> bool:
    """Whether ``user_data`` with these wire keys is enough for Meta to accept the event."""
    keys = frozenset(wire_keys)
    return bool(keys) and not any(keys <= weak for weak in _INSUFFICIENT_SETS)


#: What match quality flags in a delivered event, each with what it means: Meta matches it
#: worse than it could (see ``delivery/tally.py``).
MATCH_FAULTS: dict[str, str] = {
    "purchase_without_email_or_phone": "a Purchase carried neither em nor ph",
    "fbclid_without_fbc": "the event_source_url carried fbclid= but user_data had no fbc",
    # (a website event without client_user_agent is refused when it is made)
    "website_without_ip": "a website event without client_ip_address",
}


def match_faults(
    event_name: str, wire_keys: Collection[str], *, website: bool, fbclid: bool
) -> tuple[str, ...]:
    """The :data:`MATCH_FAULTS` of one event, from its name, its ``user_data`` wire keys,
    whether it is a website event and whether its URL :func:`carries_fbclid`."""
    faults: tuple[str, ...] = ()
    if event_name == "Purchase" and "em" not in wire_keys and "ph" not in wire_keys:
        faults += ("purchase_without_email_or_phone",)
    if fbclid and "fbc" not in wire_keys:
        faults += ("fbclid_without_fbc",)
    if website and "client_ip_address" not in wire_keys:
        faults += ("website_without_ip",)
    return faults


def carries_fbclid(event_source_url: object) -> bool:
    """Whether an event's URL came from an ad click (Meta's ``fbclid`` parameter)."""
    return isinstance(event_source_url, str) and "fbclid=" in event_source_url


_HASHED_ORDER = ("em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country", "external_id")
_PLAIN_ORDER = (
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "subscription_id",
    "fb_login_id",
    "lead_id",
)

#: Every wire key, in the order :func:`pixelmirror.normalize.normalize_user_data` emits them.
WIRE_KEYS: tuple[str, ...] = _HASHED_ORDER + _PLAIN_ORDER

#: Wire keys whose values are normalised and SHA-256 hashed. They may hold a list of values.
HASHED_KEYS: frozenset[str] = frozenset(_HASHED_ORDER)

#: Accepted ``user_data`` keys (Meta SDK long names and Meta's wire keys) -> wire key.
USER_DATA_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "email": "em",
        "em": "em",
        "phone": "ph",
        "ph": "ph",
        "first_name": "fn",
        "fn": "fn",
        "last_name": "ln",
        "ln": "ln",
        "date_of_birth": "db",
        "db": "db",
        "gender": "ge",
        "ge": "ge",
        "city": "ct",
        "ct": "ct",
        "state": "st",
        "st": "st",
        "zip_code": "zp",
        "zp": "zp",
        "country": "country",
        "country_code": "country",
        "external_id": "external_id",
        **{key: key for key in _PLAIN_ORDER},
    }
)


# -- error answers -----------------------------------------------------------------------

# Meta's error codes, grouped by what a sender should do.
_THROTTLE_CODES = frozenset({1, 2, 4, 17, 32, 341, 613, *range(80000, 80015)})
_ACCESS_CODES = frozenset({10, 102, 190, *range(200, 300)})
_INVALID_TOKEN = 190
_DEPRECATED_VERSION = 2635
_INVALID_PARAMETER = 100
_UNKNOWN_OBJECT_SUBCODE = 33  # "Object with ID ... does not exist": wrong pixel or no access
# Conversions API subcodes about one event: stale event_time, bad hashed data, missing fields.
_EVENT_SUBCODES = range(2_804_000, 2_805_000)
# How Meta names the event it refused: "data[3]", "event 3", "event index 3".
_NAMES_AN_EVENT = re.compile(r"\bdata\[\d+\]|\bevent(?: index)? #?\d+", re.IGNORECASE)


class Fault(enum.Enum):
    """What an answer asks of a sender."""

    #: Try again later: the network, Meta's servers, or throttling.
    RETRY = "retry"
    #: A person must fix the token or its permissions; no event is at fault.
    ACCESS = "access"
    #: The request itself is wrong (app secret, pixel id, API version): every batch would fail.
    REQUEST = "request"
    #: Meta ties the refusal to an event in the batch.
    EVENTS = "events"


def fault(status: int, error: Mapping[str, object]) -> Fault:
    """What Meta's Graph ``error`` object, answered with HTTP ``status``, asks a sender to do.

    Only an error Meta ties to an event (an event subcode, or an event named in its message)
    is :attr:`Fault.EVENTS`, the one answer that may split a batch and bury events. Any other
    refusal is about the request: Meta answers a missing or wrong ``appsecret_proof`` with
    code 100 and no subcode, and every event would fail alike.
    """
    code = error_number(error.get("code"))
    subcode = error_number(error.get("error_subcode"))
    if code in _ACCESS_CODES:
        return Fault.ACCESS
    if code == _DEPRECATED_VERSION or (
        code == _INVALID_PARAMETER and subcode == _UNKNOWN_OBJECT_SUBCODE
    ):
        return Fault.REQUEST
    if (
        error.get("is_transient") is True
        or code in _THROTTLE_CODES
        or status >= 500
        or status == 429
    ):
        return Fault.RETRY
    if status in (401, 403):
        return Fault.ACCESS
    texts = (error.get("message"), error.get("error_user_msg"))
    if (subcode is not None and subcode in _EVENT_SUBCODES) or any(
        isinstance(text, str) and _NAMES_AN_EVENT.search(text) for text in texts
    ):
        return Fault.EVENTS
    return Fault.REQUEST


def advice(found: Fault, code: int | None, subcode: int | None, message: str) -> str:
    """What a person should do about an answer: the fix for the codes Meta documents, else
    the fix for its kind of fault."""
    if found is Fault.RETRY:
        return "Meta is unreachable or throttling: try again in a few minutes"
    if code == _INVALID_TOKEN:
        return (
            "the access token is invalid, expired or revoked: generate a new one in "
            "Events Manager > Settings > Conversions API"
        )
    if code == _DEPRECATED_VERSION:
        return "this Graph API version is retired: raise PIXELMIRROR_API_VERSION"
    if code == _INVALID_PARAMETER and subcode == _UNKNOWN_OBJECT_SUBCODE:
        return "no such pixel, or the token cannot reach it: check PIXELMIRROR_PIXEL_ID"
    if found is Fault.REQUEST:
        if "appsecret_proof" in message:
            return (
                "the app secret does not belong to the token's app: check "
                "PIXELMIRROR_APP_SECRET (unset it if the app does not require appsecret_proof)"
            )
        return (
            "Meta refused the request itself, not an event in it: check PIXELMIRROR_PIXEL_ID, "
            "PIXELMIRROR_APP_SECRET and PIXELMIRROR_API_VERSION"
        )
    if found is Fault.ACCESS:
        return (
            "the token lacks permission on this pixel: the system user needs the pixel "
            "assigned with 'Manage' access"
        )
    return "Meta rejected the event: see the message above"


def error_number(value: object) -> int | None:
    """A code of Meta's error object, which may come as a number or a digit string."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None

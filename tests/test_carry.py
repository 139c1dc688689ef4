"""Tests for pixelmirror.web.carry: the signed cookie carrying browser events over a redirect."""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from itsdangerous import URLSafeTimedSerializer

from identitykit import KEY, NOW, OLD_KEY, OTHER_KEY, parse, request
from pixelmirror.config import Config
from pixelmirror.events import BrowserEvent
from pixelmirror.web.carry import CARRY_MAX_BYTES, CARRY_SALT, Carry

EVENTS = [
    BrowserEvent("AddToCart", "e-1", {"value": 10, "currency": "USD"}),
    BrowserEvent("Purchase", "e-2", {"value": 49.99, "currency": "USD"}, pixel_id="222"),
]
# The same events as the cookie's payload: the wire format, unchanged since cookies were set.
WIRE: list[dict[str, object]] = [
    {"name": "AddToCart", "event_id": "e-1", "custom_data": {"value": 10, "currency": "USD"}},
    {
        "name": "Purchase",
        "event_id": "e-2",
        "custom_data": {"value": 49.99, "currency": "USD"},
        "pixel_id": "222",
    },
]


def make(**settings: Any) -> Carry:
    settings.setdefault("secret_key", (KEY, OLD_KEY))
    return Carry(Config(pixel_id="1", **settings))


def carried(carry: Carry, set_cookie: str, *, now: float = NOW) -> list[BrowserEvent]:
    name, value, _ = parse(set_cookie)
    return carry.read(request(cookies={name: value}), now=now)


def test_carry_round_trip() -> None:
    carry = make()
    set_cookie = carry.cookie(EVENTS, now=NOW)
    assert carried(carry, set_cookie) == EVENTS
    assert carried(carry, set_cookie, now=NOW + 600) == EVENTS


@pytest.mark.parametrize(
    ("settings", "expected", "absent"),
    [
        pytest.param(
            {},
            {"max-age": "600", "path": "/", "httponly": "", "samesite": "Lax", "secure": ""},
            {"domain"},
            id="defaults",
        ),
        pytest.param({"cookie_secure": False}, {"httponly": ""}, {"secure"}, id="not-secure"),
        pytest.param({"cookie_domain": "example.com"}, {"domain": "example.com"}, set(), id="dom"),
    ],
)
def test_carry_cookie_attributes(
    settings: dict[str, Any], expected: dict[str, str], absent: set[str]
) -> None:
    carry = make(**settings)
    name, _, attrs = parse(carry.cookie(EVENTS, now=NOW))
    assert name == "_pm_vid_ev"
    assert attrs.items() >= expected.items()
    assert not absent & attrs.keys()
    name, value, attrs = parse(carry.clear)
    assert (name, value, attrs["max-age"]) == ("_pm_vid_ev", "", "0")
    assert attrs.items() >= {k: v for k, v in expected.items() if k != "max-age"}.items()


def _flip(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


@pytest.mark.parametrize(
    ("tweak", "now"),
    [
        pytest.param(_flip, NOW, id="tampered"),
        pytest.param(lambda t: t.replace(".", "", 1), NOW, id="mangled"),
        pytest.param(lambda t: t, NOW + 601, id="expired"),
        pytest.param(lambda t: t, NOW - 3600, id="from-the-future"),
        pytest.param(lambda t: "garbage", NOW, id="garbage"),
        pytest.param(lambda t: "", NOW, id="empty"),
        pytest.param(lambda t: t + "x" * 5000, NOW, id="oversized"),
    ],
)
def test_read_rejects(tweak: Callable[[str], str], now: float) -> None:
    carry = make()
    name, value, _ = parse(carry.cookie(EVENTS, now=NOW))
    assert carry.read(request(cookies={name: tweak(value)}), now=now) == []


def test_read_without_cookie() -> None:
    assert make().read(request()) == []


def test_carried_events_survive_key_rotation() -> None:
    set_cookie = make(secret_key=(OLD_KEY,)).cookie(EVENTS, now=NOW)
    assert carried(make(secret_key=(KEY, OLD_KEY)), set_cookie) == EVENTS
    assert carried(make(secret_key=(OTHER_KEY,)), set_cookie) == []


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"name": "Purchase", "event_id": "e"}, id="not-a-list"),
        pytest.param([{"name": "Purchase"}], id="no-event-id"),
        pytest.param([{"name": 1, "event_id": "e"}], id="name-not-text"),
        pytest.param([{"name": "P", "event_id": "e", "custom_data": [1]}], id="custom-data-list"),
        pytest.param(["Purchase"], id="not-a-dict"),
    ],
)
def test_read_rejects_signed_nonsense(payload: object) -> None:
    # Made with the library's own serializer and the wall clock: the format is itsdangerous'.
    token = URLSafeTimedSerializer(KEY, salt=CARRY_SALT).dumps(payload)
    assert make().read(request(cookies={"_pm_vid_ev": token})) == []


def test_the_wire_format_is_the_libraries_own() -> None:
    # A cookie set before the events became BrowserEvents reads as the same events.
    token = URLSafeTimedSerializer(KEY, salt=CARRY_SALT).dumps(WIRE)
    assert make().read(request(cookies={"_pm_vid_ev": token})) == EVENTS
    _, value, _ = parse(make().cookie(EVENTS))
    assert URLSafeTimedSerializer(KEY, salt=CARRY_SALT).loads(value) == WIRE


def test_an_event_without_custom_data_reads_with_none() -> None:
    token = URLSafeTimedSerializer(KEY, salt=CARRY_SALT).dumps([{"name": "L", "event_id": "e"}])
    assert make().read(request(cookies={"_pm_vid_ev": token})) == [BrowserEvent("L", "e")]


def test_carry_nothing_deletes_the_cookie() -> None:
    carry = make()
    assert carry.cookie([], now=NOW) == carry.clear


@pytest.mark.parametrize(
    ("custom_data", "read_back"),
    [
        pytest.param({"value": Decimal("9.90")}, {"value": 9.9}, id="decimal"),
        pytest.param(MappingProxyType({"k": "v"}), {"k": "v"}, id="mapping-proxy"),
        pytest.param({"ids": frozenset({"b", "a"})}, {"ids": ["a", "b"]}, id="frozenset"),
    ],
)
def test_carry_follows_the_one_json_policy(
    custom_data: Mapping[str, object], read_back: dict[str, object]
) -> None:
    carry = make()
    events = [BrowserEvent("Purchase", "e", custom_data)]
    assert carried(carry, carry.cookie(events, now=NOW)) == [
        BrowserEvent("Purchase", "e", read_back)
    ]


def test_carry_drops_oldest_custom_data_first(caplog: pytest.LogCaptureFixture) -> None:
    carry = make()
    # Random hex does not compress: 8 events of ~700 bytes are well over the limit.
    events = [
        BrowserEvent("AddToCart", f"e-{n}", {"blob": secrets.token_hex(350)}) for n in range(8)
    ]
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        set_cookie = carry.cookie(events, now=NOW)
    assert len(set_cookie.encode()) <= CARRY_MAX_BYTES
    assert "custom_data dropped" in caplog.text
    result = carried(carry, set_cookie)
    assert [event.event_id for event in result] == [f"e-{n}" for n in range(8)]
    kept = [bool(event.custom_data) for event in result]
    assert kept[-1]
    assert not kept[0]
    assert kept == sorted(kept)  # stripped from the oldest onwards
    assert result[-1] == events[-1]


def test_carry_drops_oldest_events_last(caplog: pytest.LogCaptureFixture) -> None:
    carry = make()
    events = [BrowserEvent("Lead", f"{n}-{secrets.token_hex(300)}", {"v": n}) for n in range(10)]
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        set_cookie = carry.cookie(events, now=NOW)
    assert len(set_cookie.encode()) <= CARRY_MAX_BYTES
    result = carried(carry, set_cookie)
    assert 0 < len(result) < 10
    assert [event.event_id for event in result] == [
        event.event_id for event in events[-len(result) :]
    ]
    assert all(not event.custom_data for event in result)
    assert "event(s) dropped" in caplog.text


def test_carry_of_one_huge_event_gives_the_deleting_cookie() -> None:
    carry = make()
    assert carry.cookie([BrowserEvent("Lead", secrets.token_hex(4000))], now=NOW) == carry.clear


def test_carry_does_not_change_the_callers_events() -> None:
    events = [BrowserEvent("Lead", "e", {"blob": secrets.token_hex(3000)})]
    make().cookie(events, now=NOW)
    assert events[0].custom_data


@pytest.mark.parametrize("seed", range(3))
def test_a_header_without_the_name_reads_as_one_parsed(seed: int) -> None:
    # Pages whose Cookie header does not name the carry cookie are answered without a parse:
    # every header reads as its cookies say, names close to the carry cookie's among them.
    rng = random.Random(seed)
    carry = make()
    token = parse(carry.cookie(EVENTS, now=NOW))[1]
    pairs = [
        f"{carry.name}={token}",
        f" {carry.name} = {token} ",
        f"{carry.name}=x",
        f"{carry.name[:-1]}={token}",
        f"{carry.name}2={token}",
        "_pm_vid=abc",
        "theme=dark",
        "junk",
    ]
    for _ in range(300):
        header = ";".join(rng.sample(pairs, rng.randint(0, 4)))
        facts = request(headers={"cookie": header})
        expected = EVENTS if facts.cookies.get(carry.name) == token else []
        assert carry.read(facts, now=NOW) == expected, header

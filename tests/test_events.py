from __future__ import annotations

import inspect
import ipaddress
import json
import math
import os
import pickle
import random
import uuid
from dataclasses import MISSING, FrozenInstanceError, fields, replace
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest

from identitykit import visitor_wire
from pixelmirror.escaping import safe_json
from pixelmirror.events import BatchKey, BrowserEvent, EventOptions, ServerEvent, new_event_id
from pixelmirror.meta import DAY
from pixelmirror.mirror import PixelMirror
from pixelmirror.normalize import WireUserData, sha256_hex, wire_user_data
from pixelmirror.pageviews import page_views

NOW = 1_800_000_000.0
UA = "Mozilla/5.0 (X11; Linux x86_64)"


def build(event_name: str = "Lead", **overrides: Any) -> ServerEvent:
    arguments: dict[str, Any] = {
        "pixel_id": "1234",
        "action_source": "system_generated",
        "user_data": {"email": "Ann@Example.com "},
        "now": NOW,
    }
    arguments.update(overrides)
    return ServerEvent.create(event_name, **arguments)


def wire(event: ServerEvent) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(event.payload)
    return body


def test_payload_carries_every_field_once_serialised() -> None:
    event = build(
        "Purchase",
        action_source="website",
        event_id="evt-1",
        event_time=NOW - 60,
        event_source_url="https://shop.example/thanks",
        referrer_url="https://shop.example/cart",
        user_data={"email": "ann@example.com", "client_user_agent": UA, "fbp": "fb.1.1.2"},
        custom_data={"value": Decimal("49.99"), "currency": "USD", "contents": ({"id": "A"},)},
        opt_out=True,
        test_event_code="TEST42",
    )
    body = wire(event)
    assert body == {
        "event_name": "Purchase",
        "event_time": int(NOW - 60),
        "event_id": "evt-1",
        "action_source": "website",
        "user_data": {
            "em": body["user_data"]["em"],
            "client_user_agent": UA,
            "fbp": "fb.1.1.2",
        },
        "event_source_url": "https://shop.example/thanks",
        "referrer_url": "https://shop.example/cart",
        "custom_data": {"value": 49.99, "currency": "USD", "contents": [{"id": "A"}]},
        "opt_out": True,
    }
    assert len(body["user_data"]["em"]) == 64
    assert (event.pixel_id, event.event_id, event.event_time) == ("1234", "evt-1", int(NOW - 60))
    assert event.batch_key == BatchKey(
        destination="meta", pixel_id="1234", test_event_code="TEST42"
    )
    assert type(event.batch_key) is BatchKey


def test_event_id_and_time_default_to_fresh_values() -> None:
    first, second = build(), build()
    assert first.event_id != second.event_id
    assert len(first.event_id) == 32
    assert first.event_time == int(NOW)


def test_limited_data_use_defaults_to_geolocation() -> None:
    body = wire(build(data_processing_options=["LDU"]))
    assert body["data_processing_options"] == ["LDU"]
    assert body["data_processing_options_country"] == 0
    assert body["data_processing_options_state"] == 0
    assert wire(build(data_processing_options=[]))["data_processing_options"] == []


@pytest.mark.parametrize(
    ("action_source", "age_days", "accepted"),
    [
        pytest.param("website", 6.9, True, id="website-6.9-days"),
        pytest.param("system_generated", 7.1, False, id="system-7.1-days"),
        pytest.param("physical_store", 61, True, id="store-61-days"),
        pytest.param("physical_store", 63, False, id="store-63-days"),
    ],
)
def test_age_window_by_action_source(action_source: str, age_days: float, accepted: bool) -> None:
    extra: dict[str, Any] = {"event_time": NOW - age_days * DAY, "action_source": action_source}
    if action_source == "website":
        extra.update(
            event_source_url="https://a.example/",
            user_data={"email": "a@b.example", "client_user_agent": UA},
        )
    if accepted:
        event = build(**extra)
        assert event.expires_at > NOW
    else:
        with pytest.raises(ValueError, match="days old"):
            build(**extra)


@pytest.mark.parametrize(
    ("event_name", "overrides", "message"),
    [
        pytest.param("", {}, "event_name must be a non-empty string", id="empty-name"),
        pytest.param("x" * 51, {}, "at most 50 characters", id="long-name"),
        pytest.param(
            "Lead", {"action_source": "web"}, "action_source must be one of", id="action-source"
        ),
        pytest.param("Lead", {"event_time": NOW * 1000}, "not milliseconds", id="milliseconds"),
        pytest.param(
            "Lead", {"event_time": math.inf}, "event_time must be finite", id="infinite-time"
        ),
        pytest.param(
            "Lead", {"event_time": "now"}, "event_time must be Unix seconds", id="text-time"
        ),
        pytest.param(
            "Lead", {"event_id": ""}, "event_id must be a non-empty string", id="empty-id"
        ),
        pytest.param(
            "Lead",
            {"action_source": "website", "user_data": {"client_user_agent": UA}},
            "event_source_url is required",
            id="website-url",
        ),
        pytest.param(
            "Lead",
            {"action_source": "website", "event_source_url": "https://a.example/"},
            "client_user_agent'] is required",
            id="website-ua",
        ),
        pytest.param("Lead", {"event_source_url": "/relative"}, "absolute http", id="relative-url"),
        pytest.param("Purchase", {}, "Purchase needs custom_data", id="purchase-no-data"),
        pytest.param(
            "Purchase",
            {"custom_data": {"value": 5}},
            "Purchase needs custom_data",
            id="purchase-no-currency",
        ),
        pytest.param(
            "Lead", {"custom_data": {"value": math.nan}}, "must be finite", id="nan-value"
        ),
        pytest.param("Lead", {"custom_data": {"value": "5"}}, "must be a number", id="text-value"),
        pytest.param("Lead", {"custom_data": {"value": True}}, "must be a number", id="bool-value"),
        pytest.param(
            "Lead", {"custom_data": {"margin": math.inf}}, "finite numbers", id="nested-inf"
        ),
        pytest.param("Lead", {"custom_data": {"when": object()}}, "JSON values", id="not-json"),
        pytest.param(
            "Lead", {"custom_data": {"currency": "US"}}, "3-letter ISO 4217", id="currency"
        ),
        pytest.param("Lead", {"user_data": {"mail": "a@b.example"}}, "mail", id="unknown-user-key"),
        pytest.param(
            "Lead",
            {"user_data": {"gender": "f", "first_name": "Ann"}},
            "does not identify",
            id="weak-user-data",
        ),
        pytest.param(
            "Lead",
            {"data_processing_options": ["GDPR"]},
            "must be \\[\\] or \\['LDU'\\]",
            id="ldu-option",
        ),
        pytest.param(
            "Lead",
            {"data_processing_options": ["LDU"], "data_processing_options_state": 5},
            "0 or 1000",
            id="ldu-state",
        ),
    ],
)
def test_programmer_errors_raise_clear_value_errors(
    event_name: str, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build(event_name, **overrides)


def test_unusable_value_is_dropped_not_fatal_when_others_identify() -> None:
    body = wire(build(user_data={"email": "not-an-email", "external_id": "cust-9"}))
    assert set(body["user_data"]) == {"external_id"}


@pytest.mark.parametrize(
    "custom_data",
    [
        pytest.param(MappingProxyType({"content_ids": ["a"]}), id="mapping-proxy"),
        pytest.param({"nested": MappingProxyType({"k": 1})}, id="nested-mapping-proxy"),
        pytest.param({"value": Decimal("9.90"), "currency": "USD"}, id="decimal"),
        pytest.param({"content_ids": frozenset({"b", "a"})}, id="frozenset"),
        pytest.param({"content_ids": {3, "x"}}, id="mixed-set"),
        pytest.param({"contents": ({"id": "a", "quantity": 1},)}, id="tuple"),
    ],
)
def test_the_page_and_the_server_copy_serialise_custom_data_alike(
    custom_data: Any,
) -> None:
    server = wire(build(custom_data=custom_data))["custom_data"]
    assert json.loads(safe_json(custom_data)) == server


def test_event_options_are_the_optional_keywords_of_create() -> None:
    # PixelMirror.send takes these as **options: they must not drift from create's.
    create = inspect.signature(ServerEvent.create).parameters
    send = inspect.signature(PixelMirror.send).parameters
    optional = {name for name, p in create.items() if p.default is not inspect.Parameter.empty}
    assert set(EventOptions.__annotations__) == optional - {
        "test_event_code",
        "default_country",
        "now",
    }
    assert set(create) - {"now", "default_country"} == {
        "event_name",
        *EventOptions.__annotations__,
        *send,
    } - {
        "self",
        "wait",
        "options",
    }


def test_event_ids_are_uuid4_hex_and_unique_across_many_mints() -> None:
    ids = [new_event_id() for _ in range(2000)]  # several refills of the pool
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(hex=event_id)
        assert parsed.hex == event_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_mints_other_ids_than_its_parent() -> None:
    new_event_id()  # the parent holds a partly used pool when it forks
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids and leave at once
        try:
            os.write(writer, " ".join(new_event_id() for _ in range(300)).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        child = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    parent = {new_event_id() for _ in range(300)}
    assert len(child) == 300
    assert not child & parent


def _random_page_view_inputs(rng: random.Random) -> dict[str, Any]:
    """Page view arguments as pages make them, with now and then one that create refuses."""
    text = "abcXYZ 09\"\\é€\u2028\n<>&'/"

    def some(chars: str, low: int, high: int) -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randint(low, high)))

    user_data: dict[str, object] = {}
    if rng.random() < 0.9:
        user_data["external_id"] = rng.choice(
            [uuid.uuid4().hex, [uuid.uuid4().hex, some(text, 0, 8)], some(text, 1, 20)]
        )
    if rng.random() < 0.9:
        user_data["client_ip_address"] = rng.choice(
            ["127.0.0.1", "2001:db8::1", "10.0.0.300", some(text, 1, 10)]
        )
    if rng.random() < 0.9:
        user_data["client_user_agent"] = rng.choice(["Mozilla/5.0", some(text, 0, 30)])
    user_data["fbp"] = rng.choice([None, "fb.1.1700000000000.123456789", some(text, 1, 12)])
    user_data["fbc"] = rng.choice([None, "fb.1.1700000000000.AbCd", some(text, 1, 12)])
    if rng.random() < 0.3:
        user_data[rng.choice(["email", "em", "phone", "ct", "country"])] = some(text, 0, 16)
    if rng.random() < 0.2:
        key = rng.choice(["fb_login_id", "lead_id", "subscription_id"])
        user_data[key] = rng.choice([rng.randint(1, 10**12), some(text, 1, 12)])
    if rng.random() < 0.05:
        user_data["nonsense"] = "x"

    def url() -> object:
        if rng.random() < 0.8:
            return rng.choice(["https://shop.example/p?q=", "http://127.0.0.1:8000/"]) + some(
                text, 0, 10
            )
        return rng.choice(["", "ftp://x/", None, some(text, 1, 10)])

    pixels = [str(rng.randint(1, 10**15)) for _ in range(rng.randint(0, 3))]
    return {
        "pixel_ids": pixels,
        "event_id": rng.choice(
            [uuid.uuid4().hex, uuid.uuid4().hex, some(text, 1, 40), "", "x" * 257]
        ),
        "user_data": user_data,
        "event_source_url": url(),
        "referrer_url": rng.choice([None, url()]),
        "data_processing_options": rng.choice([None, None, [], ["LDU"], ("LDU",), ["X"], "LDU"]),
        "test_event_code": rng.choice([None, "", "TEST123"]),
        "default_country": rng.choice([None, "us", "DE", "gb"]),
        "now": rng.uniform(1.7e9, 1.8e9),
    }


@pytest.mark.parametrize("seed", range(4))
def test_page_views_are_what_create_builds_byte_for_byte(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        args = _random_page_view_inputs(rng)
        pixels = args.pop("pixel_ids")
        try:
            expected: object = [
                ServerEvent.create("PageView", pixel_id=pixel, action_source="website", **args)
                for pixel in pixels
            ]
        except ValueError as exc:
            expected = ("ValueError", str(exc))
        for _ in range(2):  # the second time the visitor's user data may be a kept one
            try:
                got: object = page_views(pixels, **args)
            except ValueError as exc:
                got = ("ValueError", str(exc))
            assert got == expected, args
            if isinstance(expected, list):  # == leaves the match signatures out
                assert isinstance(got, list)
                assert [event.match for event in got] == [event.match for event in expected]


def test_a_page_views_dropped_value_is_logged_on_every_page(
    caplog: pytest.LogCaptureFixture,
) -> None:
    user_data = {"external_id": "v1", "client_ip_address": "not-an-ip", "client_user_agent": "UA"}
    for _ in range(3):
        page_views(["1"], event_id="e1", user_data=user_data, event_source_url="https://a.example/")
    dropped = [r for r in caplog.records if "client_ip_address" in r.getMessage()]
    assert len(dropped) == 3


def _random_event_inputs(rng: random.Random) -> dict[str, Any]:
    """create's arguments with odd text (quotes, backslashes, controls, non-ASCII) and odd
    custom data, now and then one that create refuses."""
    text = "abcXYZ 09\"\\é€\u2028\n\x00\x1f<>&'/😀"

    def some(low: int, high: int) -> str:
        return "".join(rng.choice(text) for _ in range(rng.randint(low, high)))

    usable = {  # kept as they are, or hashed
        "em": 'a"b\\é€😀@x.example',
        "ph": "+1 (650) 555-1212",
        "fn": 'Zoë "Q"',
        "ct": "São Paulo",
        "st": "CA",
        "zp": "94025",
        "country": "us",
        "external_id": some(1, 20),
        "fbp": some(1, 20),
        "fbc": some(1, 20),
    }
    user_data: dict[str, object] = {
        key: rng.choice([value, value, some(1, 20), some(0, 3), None])
        for key, value in usable.items()
        if rng.random() < 0.5
    }
    user_data["client_user_agent"] = some(0, 30)
    user_data["client_ip_address"] = rng.choice(["203.0.113.9", "2001:db8::1", some(1, 6)])
    if rng.random() < 0.2:
        user_data[rng.choice(["em", "lead_id"])] = rng.choice([[some(1, 9), some(1, 9)], 12345])
    custom: dict[str, object] = {
        "value": rng.choice([1, 2.5, Decimal("9.99"), 10**20, 1e-7]),
        "currency": rng.choice(["EUR", "usd"]),
        some(1, 5): rng.choice([some(0, 8), [1, {"id": some(1, 4)}], {"b", "a"}, None]),
    }
    if rng.random() < 0.05:
        custom["value"] = math.nan
    return {
        "event_name": rng.choice(["Purchase", "Lead", some(1, 12)]),
        "action_source": rng.choice(["website", "app", "system_generated"]),
        "user_data": user_data,
        "custom_data": rng.choice([custom, None, {}]),
        "event_id": rng.choice([uuid.uuid4().hex, some(1, 20)]),
        "event_source_url": rng.choice(["https://shop.example/?q=" + some(0, 9), None]),
        "referrer_url": rng.choice([None, "http://a.example/" + some(0, 6)]),
        "opt_out": rng.random() < 0.2,
        "data_processing_options": rng.choice([None, [], ["LDU"]]),
        "default_country": rng.choice([None, "us", "de"]),
        "now": rng.uniform(1.7e9, 1.8e9),
    }


@pytest.mark.parametrize("seed", range(4))
def test_the_kept_user_data_text_makes_the_payload_the_encoder_makes(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A visitor's user data is written into the payload from its kept JSON text; without the
    text, the encoder writes the whole body. Both must be the same bytes."""
    rng = random.Random(seed)

    def made(args: dict[str, Any]) -> object:
        try:
            return ServerEvent.create(pixel_id="1", **args).payload
        except ValueError as exc:
            return ("ValueError", str(exc))

    for _ in range(500):
        args = _random_event_inputs(rng)
        with monkeypatch.context() as patch:
            patch.setattr(WireUserData, "text", lambda self: None)
            encoded = made(args)
        assert made(args) == encoded, args
        assert made(args) == encoded, args  # again, from the kept user data


def test_the_constructor_takes_the_fields_in_order_with_their_defaults() -> None:
    parameters = list(inspect.signature(ServerEvent).parameters.values())
    assert [(p.name, p.default) for p in parameters] == [
        (f.name, inspect.Parameter.empty if f.default is MISSING else f.default)
        for f in fields(ServerEvent)
    ]
    event = build()
    rebuilt = ServerEvent(*(getattr(event, f.name) for f in fields(ServerEvent)))
    assert [getattr(rebuilt, f.name) for f in fields(ServerEvent)] == [
        getattr(event, f.name) for f in fields(ServerEvent)
    ]
    assert rebuilt == event == replace(event, match=None) != replace(event, destination="audit")
    assert pickle.loads(pickle.dumps(event)) == event
    with pytest.raises(FrozenInstanceError):
        event.pixel_id = "5678"  # type: ignore[misc]


def test_a_browser_events_constructor_takes_its_fields_and_fills_the_factory_ones() -> None:
    names = list(inspect.signature(BrowserEvent).parameters)
    assert names == [f.name for f in fields(BrowserEvent)]
    first, second = BrowserEvent("Lead"), BrowserEvent("Lead")
    assert len(first.event_id) == 32
    assert first.event_id != second.event_id
    assert first.custom_data == {}
    assert first.custom_data is not second.custom_data
    assert first.pixel_id is None
    event = BrowserEvent("Purchase", "p1", {"value": 1}, "222")
    assert event == BrowserEvent(
        name="Purchase", event_id="p1", custom_data={"value": 1}, pixel_id="222"
    )
    assert repr(event) == (
        "BrowserEvent(name='Purchase', event_id='p1', custom_data={'value': 1}, pixel_id='222')"
    )
    assert replace(event, pixel_id=None).pixel_id is None
    with pytest.raises(FrozenInstanceError):
        event.name = "Lead"  # type: ignore[misc]


def _random_visitor_fields(rng: random.Random) -> dict[str, Any]:
    """A visitor's user data as identity makes it, and now and then one no rule keeps."""
    text = "abcXYZ 09\"\\é€\u2028\u0000\u001f\t\n<>&'/😀"

    def some(low: int, high: int) -> str:
        return "".join(rng.choice(text) for _ in range(rng.randint(low, high)))

    digest = sha256_hex(some(0, 20))
    v4 = ".".join(str(rng.randint(0, 255)) for _ in range(4))
    v6 = ipaddress.IPv6Address(rng.getrandbits(128))
    mapped, zoned = f"::ffff:{v4}", f"fe80::1%eth{rng.randint(0, 9)}"
    fbp, fbc = "fb.1.1700000000000.123456789", "fb.1.1700000000000.IwAR1A-b_"

    def pick(usual: list[object], odd: list[object]) -> object:
        return rng.choice(usual if rng.random() < 0.85 else odd)

    return {
        "external_id": pick(
            [digest], [digest.upper(), f" {digest}", digest[:63], "g" * 64, "", some(1, 9)]
        ),
        "client_ip_address": pick(
            [v4, v6.compressed, None],
            [v6.exploded, mapped, zoned, f" {v4}", "010.1.2.3", "", " ", some(1, 12)],
        ),
        "client_user_agent": pick([UA, some(1, 40).strip() or UA], [None, "", " ", f" {UA}"]),
        "fbp": pick([None, fbp], ["", " ", some(1, 12)]),
        "fbc": pick([None, fbc], ["", " ", some(1, 12)]),
    }


@pytest.mark.parametrize("seed", range(4))
def test_a_visitors_wire_user_data_is_what_normalising_gives(seed: int) -> None:
    rng = random.Random(seed)
    straight = 0
    for _ in range(1000):
        user_data = _random_visitor_fields(rng)
        made = visitor_wire(
            user_data["external_id"],
            user_data["client_ip_address"],
            user_data["client_user_agent"],
            user_data["fbc"],
            user_data["fbp"],
        )
        if made is None:
            continue
        straight += 1
        normalised = wire_user_data(user_data)
        assert made == (normalised.text(), tuple(normalised.data)), user_data
        assert list(user_data.values()).count(None) == len(user_data) - len(made[1])
        assert json.loads(made[0]) == {k: v for k, v in user_data.items() if v is not None}
    assert straight > 300  # the usual visitor takes it


@pytest.mark.parametrize("seed", range(4))
def test_page_views_of_a_visitors_wire_user_data_are_what_create_builds(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        user_data = _random_visitor_fields(rng)
        user_wire = visitor_wire(
            user_data["external_id"],
            user_data["client_ip_address"],
            user_data["client_user_agent"],
            user_data["fbc"],
            user_data["fbp"],
        )
        args = _random_page_view_inputs(rng)
        args["user_data"] = user_data
        pixels = args.pop("pixel_ids")
        try:
            expected: object = [
                ServerEvent.create("PageView", pixel_id=pixel, action_source="website", **args)
                for pixel in pixels
            ]
        except ValueError as exc:
            expected = ("ValueError", str(exc))
        try:
            got: object = page_views(pixels, user_wire=user_wire, **args)
        except ValueError as exc:
            got = ("ValueError", str(exc))
        assert got == expected, args
        if isinstance(expected, list):  # == leaves the match signatures out
            assert isinstance(got, list)
            assert [event.match for event in got] == [event.match for event in expected]


def test_page_views_of_a_visitors_wire_user_data_check_the_default_country() -> None:
    user_wire = visitor_wire(sha256_hex("v"), "127.0.0.1", UA, None, None)
    assert user_wire is not None
    with pytest.raises(ValueError, match="default_country"):
        page_views(
            ["1"],
            event_id="e1",
            user_data={},
            user_wire=user_wire,
            event_source_url="https://a.example/",
            default_country="Atlantis",
        )

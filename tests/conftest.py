"""Fixtures shared by the test modules."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import httpx
import pytest
import redis

import fakegraph
import redisutil
from pixelmirror import PixelMirror
from pixelmirror.events import ServerEvent
from pixelmirror.testing import FakeGraphAPI

TOKEN = "EAA-test-token"
PIXEL = "1234567890"
SECRET = "s3cret-signing-key-for-tests"

MakeMirror = Callable[..., PixelMirror]


@pytest.fixture
def fake() -> FakeGraphAPI:
    """A Graph API that accepts :data:`TOKEN` for any pixel."""
    return FakeGraphAPI(access_tokens={TOKEN})


@pytest.fixture
def clocked_fake() -> FakeGraphAPI:
    """The fake's own tests' Graph API: it accepts :data:`fakegraph.TOKEN` for any pixel,
    and its clock stands still at :data:`fakegraph.NOW`."""
    return FakeGraphAPI(access_tokens=[fakegraph.TOKEN], clock=fakegraph.fixed_clock)


@pytest.fixture
def clocked_client(clocked_fake: FakeGraphAPI) -> Iterator[httpx.Client]:
    """A client of ``clocked_fake`` through its in-process transport, at Graph's URL."""
    with httpx.Client(transport=clocked_fake.transport, base_url=fakegraph.GRAPH) as client:
        yield client


@pytest.fixture
def make_mirror(fake: FakeGraphAPI) -> Iterator[MakeMirror]:
    """Build PixelMirrors on ``fake`` with quick retries; all are closed afterwards."""
    made: list[PixelMirror] = []

    def make(**settings: Any) -> PixelMirror:
        options: dict[str, Any] = {
            "pixel_id": PIXEL,
            "access_token": TOKEN,
            "secret_key": SECRET,
            "cookie_secure": False,
            "flush_interval": 0.05,
            "retry_backoff": 0.001,
            "retry_backoff_max": 0.01,
            "transport": fake.transport,
        }
        options.update(settings)
        mirror = PixelMirror(**options)
        made.append(mirror)
        return mirror

    yield make
    for mirror in made:
        mirror.close(timeout=1)


@pytest.fixture
def mirror(make_mirror: MakeMirror) -> PixelMirror:
    return make_mirror()


@pytest.fixture
def served_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeGraphAPI, str]]:
    """A FakeGraphAPI on loopback, and PIXELMIRROR_* variables that point an app at it."""
    fake = FakeGraphAPI(access_tokens={TOKEN})
    with fake.serve() as url:
        for name, value in {
            "PIXELMIRROR_PIXEL_ID": PIXEL,
            "PIXELMIRROR_ACCESS_TOKEN": TOKEN,
            "PIXELMIRROR_SECRET_KEY": SECRET,
            "PIXELMIRROR_COOKIE_SECURE": "false",
            "PIXELMIRROR_GRAPH_URL": url,
            "PIXELMIRROR_FLUSH_INTERVAL": "0.05",
        }.items():
            monkeypatch.setenv(name, value)
        yield fake, url


@pytest.fixture
def server() -> Iterator[redis.Redis]:
    """The real Redis on 127.0.0.1:6379 (skipped without one, unless CI requires it)."""
    client = redisutil.redis_client()
    yield client
    client.close()


@pytest.fixture
def stream(server: redis.Redis) -> Iterator[str]:
    """A fresh stream name of this test's own, its keys deleted afterwards."""
    name = redisutil.fresh_stream()
    yield name
    redisutil.drop_keys(name)


@pytest.fixture(params=["refused", "black-hole"])
def down_redis(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a Redis outbox that is down: a closed loopback port, or a server that
    accepts connections and never answers."""
    if request.param == "refused":
        yield redisutil.UNREACHABLE_URL + "?timeout=0.2"
        return
    with redisutil.black_hole() as hole:
        yield hole.url(timeout=0.2)


#: Every Outbox method that touches the store.
OUTBOX_METHODS = (
    "put",
    "write",
    "claim",
    "ack",
    "release",
    "bury",
    "counts",
    "unfinished_by_pixel",
    "dead_letters",
    "dead_count",
    "replay_dead",
)


def record_outbox_calls(outbox: object, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Wrap ``outbox``'s methods in place (every holder sees it): each call is noted as
    ``(method, thread ident)`` before it runs."""
    calls: list[tuple[str, int]] = []

    def recording(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, threading.get_ident()))
            return call(*args, **kwargs)

        return record

    for name in OUTBOX_METHODS:
        monkeypatch.setattr(outbox, name, recording(name, getattr(outbox, name)))
    return calls


def lead(pixel_id: str = "111", **overrides: Any) -> ServerEvent:
    """A Lead built the way an app sends one: validated, normalised and hashed."""
    arguments: dict[str, Any] = {
        "pixel_id": pixel_id,
        "action_source": "system_generated",
        "user_data": {"external_id": "cust-1", "email": "ann@example.com"},
    }
    arguments.update(overrides)
    return ServerEvent.create("Lead", **arguments)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), not
    listening."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


class MakeEvent(Protocol):
    def __call__(
        self, pixel_id: str = "1", test_event_code: str | None = None, **fields: Any
    ) -> ServerEvent: ...


@pytest.fixture
def make_event() -> MakeEvent:
    """Build stored-shape events with the plain constructor: no normalisation, no validation.

    Each event gets a fresh ``event_id`` (``evt-1``, ``evt-2``, ...) unless one is given;
    any other :class:`ServerEvent` field can be overridden by keyword.
    """
    numbers = itertools.count(1)

    def make(pixel_id: str = "1", test_event_code: str | None = None, **fields: Any) -> ServerEvent:
        fields.setdefault("event_id", f"evt-{next(numbers)}")
        fields.setdefault("event_name", "Purchase")
        fields.setdefault("event_time", int(time.time()))
        fields.setdefault("action_source", "website")
        if "payload" not in fields:
            body = {
                key: fields[key]
                for key in ("event_name", "event_time", "event_id", "action_source")
            }
            fields["payload"] = json.dumps({**body, "user_data": {"em": ["0" * 64]}}).encode()
        return ServerEvent(pixel_id=pixel_id, test_event_code=test_event_code, **fields)

    return make


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "browser: end to end in a real headless Chromium (Playwright); skipped when Chromium "
        "or Playwright is missing, unless PIXELMIRROR_REQUIRE_BROWSER=1",
    )

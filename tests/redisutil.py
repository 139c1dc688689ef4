"""The real Redis for the tests: one server, one fresh key prefix per test, cleaned up after.

Tests that need Redis call :func:`redis_client`, which skips them with the reason when no
server answers, or fails them when ``PIXELMIRROR_REQUIRE_REDIS=1`` (``.ci/run`` sets it:
CI must never skip them silently).
"""

from __future__ import annotations

import functools
import os
import uuid
from urllib.parse import urlencode

import pytest
import redis

from pixelmirror.outbox import Outbox
from pixelmirror.outbox.redis import RedisOutbox

#: The server the tests use; override to point them elsewhere.
REDIS_URL = os.environ.get("PIXELMIRROR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@functools.cache
def _unavailable() -> str | None:
    """Why Redis cannot be used, or None; asked once per test session."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"no Redis answers at {REDIS_URL} ({exc}); start redis-server to run these tests"
    finally:
        client.close()
    return None


def redis_client() -> redis.Redis:
    """A client of the test server; skips (or, in CI, fails) the test without one."""
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("PIXELMIRROR_REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason}; PIXELMIRROR_REQUIRE_REDIS=1 forbids skipping", pytrace=False)
        pytest.skip(reason)
    return redis.Redis.from_url(REDIS_URL)


def fresh_stream() -> str:
    """A stream name no other test uses; every key of that outbox starts with it."""
    return f"pixelmirror-test:{uuid.uuid4().hex}"


def outbox_url(stream: str, **options: object) -> str:
    """The test server's URL with the outbox ``options`` as its query."""
    return f"{REDIS_URL}?{urlencode({'stream': stream, **options})}"


def drop_keys(stream: str) -> None:
    """Delete the stream and every key derived from it."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{stream}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def cleanup(outbox: Outbox) -> None:
    """Delete a Redis outbox's keys; other outboxes have none."""
    if isinstance(outbox, RedisOutbox) and _unavailable() is None:
        drop_keys(outbox.stream)

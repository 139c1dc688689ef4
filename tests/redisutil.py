"""The real Redis for the tests: one server, one fresh key prefix per test, cleaned up after.

Tests that need Redis call :func:`redis_client`, which skips them with the reason when no
server answers, or fails them when ``PIXELMIRROR_REQUIRE_REDIS=1`` (``.ci/run`` sets it:
CI must never skip them silently).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import uuid
from collections.abc import Iterator
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


#: Nothing listens on port 1 of the loopback: a connection is refused at once.
UNREACHABLE_URL = "redis://127.0.0.1:1/0"


class BlackHole:
    """A loopback TCP server that accepts connections, reads what they send, never answers:
    a Redis that hangs (a dead host behind a live load balancer, a stopped process)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        #: Set once a client has sent bytes: it now waits for a reply that never comes.
        self.received = threading.Event()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, **options: object) -> str:
        query = "&".join(f"{name}={value}" for name, value in options.items())
        return f"redis://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            self._open.append(conn)
            threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()

    def _swallow(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                self.received.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._server.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.close()


@contextlib.contextmanager
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()

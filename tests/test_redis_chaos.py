"""Chaos: three ``pixelmirror worker`` processes drain 20,000 events from Redis into a flaky
Graph API over loopback; one is SIGKILLed mid-batch, another SIGTERMed. Nothing is lost, and
only what the killed worker held can arrive twice.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

import redisutil
from pixelmirror.events import ServerEvent
from pixelmirror.outbox.redis import RedisOutbox
from pixelmirror.outbox.redis_options import DEFAULT_GROUP
from pixelmirror.testing import FakeGraphAPI
from waiting import wait_until

TOKEN = "EAA-chaos-token"
PIXEL = "1234567890"
EVENTS = 20_000
BATCH = 250
THREADS = 2
#: Seconds before the survivors take over the killed worker's claims.
LEASE = 3.0


def held_by(server: redis.Redis, stream: str, consumer: str) -> list[str]:
    """Ids of the entries ``consumer`` holds: claimed, not yet answered."""
    pending = server.xpending_range(stream, DEFAULT_GROUP, "-", "+", 100_000, consumer)
    return [p["message_id"].decode() for p in pending]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_worker_fleet_loses_nothing_when_workers_die(
    server: redis.Redis,
    stream: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    started = time.monotonic()
    fake = FakeGraphAPI(access_tokens={TOKEN}, failure_rate=0.2, seed=20, latency=0.005)
    web = RedisOutbox.from_url(redisutil.outbox_url(stream))
    events = [
        ServerEvent.create(
            "Lead",
            pixel_id=PIXEL,
            action_source="system_generated",
            user_data={"external_id": f"cust-{n}"},
        )
        for n in range(EVENTS)
    ]
    for start in range(0, EVENTS, 1000):
        assert web.put(events[start : start + 1000]) == 1000
    expected = {event.event_id for event in events}
    assert len(expected) == EVENTS

    workers: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in ("w1", "w2", "w3")}
    with fake.serve() as graph_url, contextlib.ExitStack() as stack:
        env = {
            **os.environ,
            "PIXELMIRROR_ACCESS_TOKEN": TOKEN,
            "PIXELMIRROR_GRAPH_URL": graph_url,
            "PIXELMIRROR_BATCH_SIZE": str(BATCH),
            "PIXELMIRROR_FLUSH_INTERVAL": "0.05",
            "PIXELMIRROR_RETRY_BACKOFF": "0.05",
            "PIXELMIRROR_RETRY_BACKOFF_MAX": "0.5",
            "PIXELMIRROR_SHUTDOWN_TIMEOUT": "20",
        }
        try:
            for name, log in logs.items():
                url = redisutil.outbox_url(stream, consumer=name, lease=LEASE)
                workers[name] = subprocess.Popen(
                    [
                        sys.executable,
                        *("-m", "pixelmirror.cli", "worker"),
                        *("--concurrency", str(THREADS), "--status-interval", "1"),
                    ],
                    env={**env, "PIXELMIRROR_OUTBOX": url},
                    stdout=subprocess.DEVNULL,
                    stderr=stack.enter_context(log.open("wb")),
                )

            # SIGKILL w1 while it holds claims: mid-batch, nothing answered. Wait until w2
            # holds one too, so that its SIGTERM below still finds work in flight however
            # fast the others drain the rest.
            wait_until(
                lambda: (
                    len(fake.event_ids()) >= EVENTS // 5
                    and held_by(server, stream, "w1")
                    and held_by(server, stream, "w2")
                ),
                timeout=60,
                what="w1 and w2 to hold a batch each",
            )
            workers["w1"].kill()
            assert workers["w1"].wait(timeout=30) == -signal.SIGKILL
            # Only these may reach Meta twice; the survivors take them over after the lease.
            orphans = held_by(server, stream, "w1")
            orphan_ids = {
                fields[b"event_id"].decode()
                for entry_id in orphans
                for _, fields in server.xrange(stream, entry_id, entry_id)
            }

            # SIGTERM w2 mid-batch: it finishes or releases what it holds, and leaves.
            workers["w2"].send_signal(signal.SIGTERM)
            assert workers["w2"].wait(timeout=30) == 0
            assert held_by(server, stream, "w2") == []

            # Drained: what w1 held counts as pending until a survivor took it over and sent it.
            wait_until(
                lambda: web.counts().unfinished == 0 and set(fake.event_ids()) >= expected,
                timeout=60,
                what="the outbox to drain",
            )
            workers["w3"].send_signal(signal.SIGTERM)
            assert workers["w3"].wait(timeout=30) == 0
        finally:
            for worker in workers.values():
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(timeout=30)
    elapsed = time.monotonic() - started

    received = collections.Counter(fake.event_ids())
    duplicates = received.total() - len(received)
    twice = {event_id for event_id, times in received.items() if times > 1}
    statuses = collections.Counter(r.status for r in fake.requests)
    print(
        f"\nchaos: {EVENTS} events, 3 workers x {THREADS} threads, batches of {BATCH}, "
        f"{len(fake.requests)} requests ({statuses[200]} accepted, "
        f"{len(fake.requests) - statuses[200]} failed); w1 SIGKILLed holding {len(orphans)}, "
        f"{duplicates} duplicate(s); {elapsed:.1f}s"
    )

    record_property("duplicates", duplicates)
    record_property("seconds", round(elapsed, 1))
    assert set(received) == expected  # none lost, nothing foreign
    assert twice <= orphan_ids  # duplicates come only from the killed worker's claims
    assert duplicates <= len(orphans) <= THREADS * BATCH
    assert max(received.values()) <= 2
    assert {500, 503, 429} <= set(statuses)  # the faults really happened
    for name in ("w2", "w3"):
        log = logs[name].read_text()
        assert "finishing the batches in flight" in log, log[-2000:]
    consumers = {c["name"].decode() for c in server.xinfo_consumers(stream, DEFAULT_GROUP)}
    assert consumers.isdisjoint({"w2", "w3"})  # they left holding nothing
    counts = web.counts()
    assert (counts.pending, counts.in_flight, counts.dead, counts.dropped) == (0, 0, 0, 0)
    assert server.xlen(stream) == 0
    web.close()

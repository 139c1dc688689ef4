"""5. Delivery throughput: events/s from ``send()`` to acknowledged by a loopback Graph stub.

pixelmirror: ``mirror.send()`` the typical Purchase N times from the main thread while the
dispatcher thread sends batches of up to 1000 to the fake; the clock stops when ``flush()``
says the outbox is empty (every event acknowledged). Memory, SQLite and (when a Redis server
answers on 127.0.0.1:6379) Redis outboxes.

Meta's SDK (``facebook_business``): the same event built from the same inputs with its
``UserData`` / ``CustomData`` / ``Event`` objects and sent with ``EventRequest.execute()``, the
documented way: 1000 events per request (its batch path), and one event per request (the
usual call from a view). The SDK is pointed at the fake through its own session: a
``FacebookSession`` whose ``GRAPH`` is the fake's URL, installed as the default API.

Both send to ``count_stub.py``, a count-only server in a process of its own (pinned to CPU
1); this process is pinned to CPU 0, so its wall time is its CPU time, every thread included.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import (
    ACCESS_TOKEN,
    PIXEL_ID,
    SECRET_KEY,
    FakeGraphProcess,
    Row,
    median,
    quiet_logs,
)
from normalize_bench import CUSTOM, URL, USER, sdk_event

from pixelmirror import PixelMirror

REDIS_URL = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """Run this process on one CPU (the fake has the other), when the machine has two."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pixelmirror_rate(graph_url: str, outbox: str, count: int) -> float:
    with quiet_logs():
        mirror = PixelMirror(
            pixel_id=PIXEL_ID,
            access_token=ACCESS_TOKEN,
            secret_key=SECRET_KEY,
            graph_url=graph_url,
            outbox=outbox,
            dispatch="thread",
            flush_interval=0.05,
            queue_size=max(100_000, 2 * count),
            handoff_size=max(100_000, 2 * count),  # sends outrun the writer: hold them all
        )
        try:
            for _ in range(50):  # warm up: connection, code paths
                _send(mirror)
            if not mirror.flush(timeout=30):
                raise RuntimeError(f"warm-up events not delivered: {mirror.stats()}")
            sent_before = mirror.stats().sent
            start = time.perf_counter()
            for _ in range(count):
                _send(mirror)
            if not mirror.flush(timeout=300):
                raise RuntimeError(f"not delivered in time: {mirror.stats()}")
            elapsed = time.perf_counter() - start
            stats = mirror.stats()
            if stats.sent - sent_before != count or stats.dead or stats.dropped:
                raise RuntimeError(f"delivery incomplete: {stats}")
        finally:
            mirror.close(timeout=5)
    return count / elapsed


def _send(mirror: PixelMirror) -> None:
    mirror.send(
        "Purchase",
        action_source="website",
        user_data=USER,
        custom_data=CUSTOM,
        event_source_url=URL,
    )


def _sdk_api(graph_url: str) -> Any:
    from facebook_business.api import FacebookAdsApi
    from facebook_business.session import FacebookSession

    session = FacebookSession(access_token=ACCESS_TOKEN)
    session.GRAPH = graph_url  # instance attribute: the class default stays Meta's URL
    api = FacebookAdsApi(session)
    FacebookAdsApi.set_default_api(api)
    return api


def sdk_rate(graph_url: str, count: int, per_request: int) -> float:
    from facebook_business.adobjects.serverside.event_request import EventRequest

    _sdk_api(graph_url)

    def event() -> Any:
        return sdk_event(uuid.uuid4().hex)

    def deliver(n: int) -> int:
        received = 0
        for first in range(0, n, per_request):
            events = [event() for _ in range(min(per_request, n - first))]
            try:
                response = EventRequest(pixel_id=PIXEL_ID, events=events).execute()
            except Exception as exc:  # its message quotes the whole request: keep the answer
                raise RuntimeError(f"SDK request failed: {str(exc)[-600:]}") from None
            received += int(response.events_received)
        return received

    deliver(min(count, per_request, 50))  # warm up: connection, pycountry's tables
    start = time.perf_counter()
    received = deliver(count)
    elapsed = time.perf_counter() - start
    if received != count:
        raise RuntimeError(f"the fake acknowledged {received} of {count} SDK events")
    return count / elapsed


def redis_outbox_url() -> tuple[str | None, str]:
    """A fresh stream on the local Redis, or None and why not."""
    try:
        from pixelmirror.outbox import open_outbox

        url = f"{REDIS_URL}?stream=pmbench:{uuid.uuid4().hex[:12]}"
        outbox = open_outbox(url)
        outbox.counts()
        outbox.close()
    except Exception as exc:
        return None, f"redis outbox unavailable: {type(exc).__name__}: {exc}"[:160]
    return url, ""


def _drop_redis(url: str) -> None:
    import redis

    stream = url.split("stream=", 1)[1]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{stream}*"):
            client.delete(key)
    finally:
        client.close()


def run(quick: bool = False) -> list[Row]:
    rounds = 1 if quick else 3
    count = 5_000 if quick else 30_000
    sdk_batch_count = 2_000 if quick else 10_000
    sdk_single_count = 100 if quick else 1_000
    redis_url, redis_note = redis_outbox_url()
    rows: list[Row] = []
    with (
        FakeGraphProcess(stub=True, cpu=1) as fake,
        pinned(0),
        tempfile.TemporaryDirectory() as tmp,
    ):
        cases: dict[str, Callable[[], float]] = {
            "SDK batch (1000/request)": lambda: sdk_rate(fake.url, sdk_batch_count, 1000),
            "SDK one call per event": lambda: sdk_rate(fake.url, sdk_single_count, 1),
            "pixelmirror, memory outbox": lambda: pixelmirror_rate(fake.url, "memory://", count),
        }
        sqlite_files: list[Path] = []

        def sqlite_case() -> float:
            path = Path(tmp) / f"outbox-{len(sqlite_files)}.db"
            sqlite_files.append(path)
            return pixelmirror_rate(fake.url, f"sqlite:///{path}", count)

        cases["pixelmirror, sqlite outbox"] = sqlite_case
        redis_urls: list[str] = []
        if redis_url is not None:

            def redis_case() -> float:
                url = f"{REDIS_URL}?stream=pmbench:{uuid.uuid4().hex[:12]}"
                redis_urls.append(url)
                return pixelmirror_rate(fake.url, url, count)

            cases["pixelmirror, redis outbox"] = redis_case
        results: dict[str, list[float]] = {name: [] for name in cases}
        try:
            for _ in range(rounds):
                for name, case in cases.items():
                    results[name].append(case())
        finally:
            for url in redis_urls:
                _drop_redis(url)
    rates = {name: median(values) for name, values in results.items()}
    batch = rates["SDK batch (1000/request)"]
    targets = {"memory": 6.0, "sqlite": 3.0, "redis": 3.0}
    for name, rate in rates.items():
        row = Row("Delivery", name, rate, "events/s", extra={"runs": results[name]})
        if name.startswith("pixelmirror"):
            row.ratio = rate / batch
            row.ratio_label = "vs SDK batch path"
            kind = name.split(", ")[1].split()[0]
            target = targets[kind]
            if target is not None:
                row.target = f"≥ {target:g}"
                row.met = row.ratio >= target
            row.note = f"{count} events per run"
        elif "one call" in name:
            row.note = f"{sdk_single_count} events per run"
        else:
            row.note = f"{sdk_batch_count} events per run"
        rows.append(row)
    if redis_url is None:
        rows.append(Row("Delivery", "pixelmirror, redis outbox", 0.0, "", note=redis_note))
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r.case, round(r.value), r.ratio, r.note)

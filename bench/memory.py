"""6. Memory: bytes per queued event in the memory outbox, and the RSS of a worker draining
a million events.

Bytes per event: ``tracemalloc`` counts what the memory outbox holds after N events were
built with ``ServerEvent.create`` and put in it (the event object, its id, its payload
bytes, the queue's own slot), after a garbage collection; the typical Purchase of the other
benchmarks and the middleware's PageView.

Worker RSS: a SQLite outbox is filled with N Purchase events (copies of one event with fresh
ids, to fill it fast), then ``pixelmirror worker`` drains it into a loopback FakeGraphAPI
(its own process, forgetting what it received). RSS is sampled from ``/proc`` every 0.1 s;
the peak is the kernel's high-water mark (``VmHWM``).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from harness import ACCESS_TOKEN, CHROME_UA, PIXEL_ID, FakeGraphProcess, Row, quiet_logs, venv_bin
from normalize_bench import CUSTOM, URL, USER

from pixelmirror.events import ServerEvent, new_event_id
from pixelmirror.normalize import sha256_hex
from pixelmirror.outbox import MemoryOutbox
from pixelmirror.outbox.sqlite import SQLiteOutbox

PAGEVIEW_USER = {
    "external_id": sha256_hex("visitor-id-1234567890ab"),
    "client_ip_address": "203.0.113.7",
    "client_user_agent": CHROME_UA,
    "fbp": "fb.1.1700000000000.1234567890",
}


def purchase() -> ServerEvent:
    return ServerEvent.create(
        "Purchase",
        pixel_id=PIXEL_ID,
        action_source="website",
        user_data=USER,
        custom_data=CUSTOM,
        event_source_url=URL,
    )


def pageview() -> ServerEvent:
    return ServerEvent.create(
        "PageView",
        pixel_id=PIXEL_ID,
        action_source="website",
        user_data=PAGEVIEW_USER,
        event_source_url="https://shop.example.com/catalogue?page=2",
        referrer_url="https://www.example.com/",
    )


def bytes_per_event(make: Any, count: int) -> tuple[float, int]:
    outbox = MemoryOutbox(max_events=count + 1)
    make()  # warm caches (regex, encoder) outside the trace
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(count):
            outbox.put([make()])
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert outbox.counts().pending == count
    payload = len(make().payload)
    return (after - before) / count, payload


def fill(path: Path, count: int) -> float:
    """Put ``count`` copies of the Purchase (fresh ids) in a SQLite outbox; seconds taken."""
    template = purchase()
    old_id = template.event_id.encode()
    outbox = SQLiteOutbox(str(path))
    start = time.perf_counter()
    chunk = 10_000
    try:
        for first in range(0, count, chunk):
            batch = []
            for _ in range(min(chunk, count - first)):
                event_id = new_event_id()
                batch.append(
                    ServerEvent(
                        pixel_id=template.pixel_id,
                        event_id=event_id,
                        event_name=template.event_name,
                        event_time=template.event_time,
                        action_source=template.action_source,
                        payload=template.payload.replace(old_id, event_id.encode()),
                    )
                )
            if outbox.put(batch) != len(batch):
                raise RuntimeError("the SQLite outbox refused events")
    finally:
        outbox.close()
    return time.perf_counter() - start


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, (0, 0) once it is gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def drain(path: Path, count: int, graph_url: str) -> dict[str, Any]:
    env = dict(
        os.environ,
        PIXELMIRROR_ACCESS_TOKEN=ACCESS_TOKEN,
        PIXELMIRROR_PIXEL_ID=PIXEL_ID,
        PIXELMIRROR_OUTBOX=f"sqlite:///{path}",
        PIXELMIRROR_GRAPH_URL=graph_url,
        PIXELMIRROR_FLUSH_INTERVAL="0.05",
    )
    command = [venv_bin("pixelmirror"), "worker", "--status-interval", "3600"]
    if (os.cpu_count() or 1) >= 2:
        command = ["taskset", "-c", "0", *command]
    watcher = SQLiteOutbox(str(path))
    samples: list[int] = []
    start = time.perf_counter()
    # Its log (a line per batch: httpx logs each request at INFO) goes to a file, read only
    # if it fails: a pipe nobody reads would fill up and stop the worker.
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 -- closed in the finally below
    worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = start + 900
        next_count = start
        left = count
        while time.perf_counter() < deadline:
            if worker.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"worker exited early: {log.read()[-500:]}")
            rss, _ = _rss_kib(worker.pid)
            if rss:
                samples.append(rss)
            now = time.perf_counter()
            if now >= next_count:
                left = watcher.counts().unfinished
                next_count = now + 1.0
                if left == 0:
                    break
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
        _, peak = _rss_kib(worker.pid)
        dead = watcher.counts().dead
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        watcher.close()
        log.close()
    if left:
        raise RuntimeError(f"worker left {left} of {count} events unsent")
    return {
        "events": count,
        "seconds": elapsed,
        "events_per_s": count / elapsed,
        "rss_median_mib": sorted(samples)[len(samples) // 2] / 1024 if samples else 0.0,
        "rss_end_mib": samples[-1] / 1024 if samples else 0.0,
        "rss_peak_mib": peak / 1024,
        "dead": dead,
    }


def run(quick: bool = False) -> list[Row]:
    traced = 2_000 if quick else 20_000
    drained = 50_000 if quick else 1_000_000
    rows: list[Row] = []
    with quiet_logs():
        for label, make in (("typical Purchase", purchase), ("middleware PageView", pageview)):
            per_event, payload = bytes_per_event(make, traced)
            rows.append(
                Row(
                    "Memory",
                    f"memory outbox, per queued {label}",
                    per_event,
                    "bytes",
                    target="≤ 2048" if label == "typical Purchase" else "",
                    met=per_event <= 2048 if label == "typical Purchase" else None,
                    note=f"payload {payload} B; {traced} events traced",
                )
            )
    with tempfile.TemporaryDirectory() as tmp, FakeGraphProcess(forget=True, cpu=1) as fake:
        path = Path(tmp) / "drain.db"
        filled = fill(path, drained)
        result = drain(path, drained, fake.url)
    result["fill_seconds"] = filled
    rows.append(
        Row(
            "Memory",
            f"`pixelmirror worker` draining {drained:,} events (SQLite)",
            result["rss_peak_mib"],
            "MiB peak RSS",
            note=f"median RSS {result['rss_median_mib']:.0f} MiB while draining, "
            f"{result['rss_end_mib']:.0f} MiB at the end; {result['events_per_s']:,.0f} events/s",
            extra=result,
        )
    )
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r.case, round(r.value, 1), r.unit, r.note)

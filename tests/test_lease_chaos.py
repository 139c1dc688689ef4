"""Chaos for leases: ``pixelmirror worker`` processes share an outbox and a slow Graph API.

Two batches go out at once, each held at a gate in front of the loopback fake. The worker
sending one is SIGKILLed: a third worker takes that batch over once its lease runs out.
The worker sending the other is alive but slow: its batch stays held for longer than a
lease, and nobody takes it, since its worker renews the lease all along. Every event
reaches Meta exactly once.
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

import redisutil
from pixelmirror.config import Config
from pixelmirror.events import ServerEvent
from pixelmirror.outbox import open_outbox
from pixelmirror.testing import FakeGraphAPI
from waiting import wait_until

SRC = Path(__file__).resolve().parents[1] / "src"
WORKERS = ("w1", "w2", "w3")
#: Each worker sends with a token of its own: the gate tells them apart by it.
TOKENS = {name: f"EAA-{name}-token" for name in WORKERS}
KILLED_PIXEL, SLOW_PIXEL = "1111111111", "2222222222"
#: The default lease: a dead sender's batch is back after it.
DEFAULT_LEASE = Config().lease


@dataclass
class Held:
    """A request that reached the gate: who sent what, and when it may go on."""

    pixel_id: str
    token: str
    event_ids: list[str]
    arrived: float
    go: threading.Event = field(default_factory=threading.Event)
    #: Answer 503 instead of forwarding (its sender is dead: the request died with it).
    drop: bool = False


class Gate(http.server.ThreadingHTTPServer):
    """A loopback proxy before the fake Graph API that holds requests until told.

    While :attr:`holding`, each request waits for its :attr:`Held.go`; afterwards new ones
    are forwarded at once. Every request is recorded in :attr:`seen`.
    """

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _GateHandler)
        self.upstream = httpx.Client(base_url=upstream, timeout=30)
        self.holding = True
        self.seen: list[Held] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def requests_for(self, pixel_id: str) -> list[Held]:
        with self.lock:
            return [held for held in self.seen if held.pixel_id == pixel_id]

    def pass_through(self) -> None:
        """Forward new requests at once; the ones held stay held."""
        with self.lock:
            self.holding = False

    def release_all(self) -> None:
        with self.lock:
            self.holding = False
            for held in self.seen:
                held.go.set()


class _GateHandler(http.server.BaseHTTPRequestHandler):
    server: Gate

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = json.loads(body)
        held = Held(
            pixel_id=self.path.split("/")[2],
            token=request["access_token"],
            event_ids=[event["event_id"] for event in request["data"]],
            arrived=time.monotonic(),
        )
        with self.server.lock:
            self.server.seen.append(held)
            if not self.server.holding:
                held.go.set()
        held.go.wait(timeout=120)
        if held.drop:
            status, answer, kind = 503, b"sender gone", "text/plain"
        else:
            upstream = self.server.upstream.post(
                self.path, content=body, headers={"Content-Type": "application/json"}
            )
            status, answer = upstream.status_code, upstream.content
            kind = upstream.headers.get("Content-Type", "application/json")
        with contextlib.suppress(OSError):  # a killed sender hung up long ago
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)


@contextlib.contextmanager
def gate_before(fake: FakeGraphAPI) -> Iterator[Gate]:
    with fake.serve() as graph_url:
        gate = Gate(graph_url)
        thread = threading.Thread(target=gate.serve_forever, daemon=True)
        thread.start()
        try:
            yield gate
        finally:
            gate.release_all()
            gate.shutdown()
            gate.server_close()
            gate.upstream.close()
            thread.join(timeout=10)


def lead(pixel_id: str, n: int) -> ServerEvent:
    return ServerEvent.create(
        "Lead",
        pixel_id=pixel_id,
        action_source="system_generated",
        user_data={"external_id": f"cust-{pixel_id}-{n}"},
    )


def run_workers(
    outbox_urls: dict[str, str], env: dict[str, str], logs: Path
) -> dict[str, subprocess.Popen[bytes]]:
    workers = {}
    for name in WORKERS:
        with (logs / f"{name}.log").open("wb") as log:
            workers[name] = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "pixelmirror.cli", "worker"),
                    *("--concurrency", "1", "--status-interval", "5"),
                ],
                env={
                    **env,
                    "PIXELMIRROR_OUTBOX": outbox_urls[name],
                    "PIXELMIRROR_ACCESS_TOKEN": TOKENS[name],
                },
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
    return workers


def kill_one_and_outwait_the_other(
    outbox_urls: dict[str, str], lease: float | None, tmp_path: Path
) -> None:
    """The scenario of this module, on any shared outbox; ``lease=None``: the default."""
    fake = FakeGraphAPI(access_tokens=set(TOKENS.values()))
    events = {pixel: [lead(pixel, n) for n in range(5)] for pixel in (KILLED_PIXEL, SLOW_PIXEL)}
    web = open_outbox(outbox_urls["web"])
    for batch in events.values():
        assert web.put(batch) == len(batch)
    expected = {event.event_id for batch in events.values() for event in batch}
    effective_lease = DEFAULT_LEASE if lease is None else lease

    with gate_before(fake) as gate:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
            "PIXELMIRROR_GRAPH_URL": gate.url,
            "PIXELMIRROR_FLUSH_INTERVAL": "0.05",
            # Longer than the slow batch is held: it is slow, not failed.
            "PIXELMIRROR_REQUEST_TIMEOUT": str(effective_lease + 30),
            "PIXELMIRROR_SHUTDOWN_TIMEOUT": "10",
        }
        if lease is not None:
            env["PIXELMIRROR_LEASE"] = str(lease)
        workers = run_workers(outbox_urls, env, tmp_path)
        try:
            wait_until(
                lambda: gate.requests_for(KILLED_PIXEL) and gate.requests_for(SLOW_PIXEL),
                timeout=60,
                what="both batches to be in flight",
            )
            (doomed,) = gate.requests_for(KILLED_PIXEL)
            (slow,) = gate.requests_for(SLOW_PIXEL)
            killed = next(name for name, token in TOKENS.items() if token == doomed.token)
            assert slow.token != doomed.token

            workers[killed].kill()
            assert workers[killed].wait(timeout=30) == -signal.SIGKILL
            killed_at = time.monotonic()
            doomed.drop = True  # its request dies with it: Meta never answers it
            doomed.go.set()
            gate.pass_through()

            wait_until(
                lambda: {e.event_id for e in events[KILLED_PIXEL]} <= set(fake.event_ids()),
                timeout=60,
                what="another worker to send the killed worker's batch",
            )
            takeover = time.monotonic() - killed_at
            # Three seconds past its lease: had the slow worker stopped renewing, the idle
            # one, polling every 50 ms, would have taken its batch by then.
            hold_until = slow.arrived + effective_lease + 3.0
            wait_until(
                lambda: time.monotonic() > hold_until,
                timeout=120,
                what="the slow batch to outlast its lease",
            )
            assert gate.requests_for(SLOW_PIXEL) == [slow]
            slow.go.set()

            wait_until(
                lambda: set(fake.event_ids()) >= expected, timeout=60, what="every event to arrive"
            )
            for name, worker in workers.items():
                if name != killed:
                    worker.send_signal(signal.SIGTERM)
                    assert worker.wait(timeout=30) == 0, (tmp_path / f"{name}.log").read_text()
        finally:
            for worker in workers.values():
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(timeout=30)

    print(f"\nlease chaos: batch taken over {takeover:.1f}s after its sender was killed")
    assert collections.Counter(fake.event_ids()) == {event_id: 1 for event_id in expected}
    assert len(gate.requests_for(KILLED_PIXEL)) == 2  # the killed one, then the takeover
    assert gate.requests_for(SLOW_PIXEL) == [slow]  # only ever sent by its own worker
    assert takeover <= 60.0
    counts = web.counts()
    assert (counts.pending, counts.in_flight, counts.dead) == (0, 0, 0)
    web.close()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_redis_a_killed_workers_batch_comes_back_within_a_minute_and_a_slow_ones_never(
    stream: str, tmp_path: Path
) -> None:
    urls = {"web": redisutil.outbox_url(stream)}
    urls.update({name: redisutil.outbox_url(stream, consumer=name) for name in WORKERS})
    kill_one_and_outwait_the_other(urls, None, tmp_path)  # the default lease


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sqlite_a_killed_workers_batch_comes_back_and_a_slow_ones_never(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    kill_one_and_outwait_the_other({"web": url, **dict.fromkeys(WORKERS, url)}, 2.0, tmp_path)

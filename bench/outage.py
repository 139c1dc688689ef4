"""7. An outbox outage seen from the web: an unrelated route's latency while Redis hangs.

uvicorn serves a Starlette app (one worker, pinned to CPU 0) with two routes: ``/`` is an
HTML page that gets the pixel, so each view hands a PageView to the Redis outbox; ``/health``
is plain text that pixelmirror leaves alone. One thread loads ``/`` as fast as it answers (a
returning visitor, keep-alive) while another times ``/health`` requests one after the
other, wall clock, for the whole run. Cases:

- *redis answers*: the local Redis on 127.0.0.1:6379 (skipped without one);
- *redis black hole*: a loopback server that accepts connections and never answers (a
  hung Redis, a dead host behind a live address), with the outbox's default 0.5 s timeout.

With events written on the request path, a black hole stalls the event loop for the
timeout at every write attempt, and every request queued behind it waits; with the handoff
only its writer thread waits. Reported, not asserted: p50, p99, the worst ``/health`` and how
many took over 250 ms (a stall hits few requests of a sequential client, so the p99 alone
can miss it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
from harness import ACCESS_TOKEN, BENCH_DIR, CHROME_UA, PAGE, PIXEL_ID, ROOT, SECRET_KEY, Row
from server import SERVER_CPU, _free_port, _pinned, _wait_ready, returning_cookie, stop

REDIS_URL = "redis://127.0.0.1:6379/0"


def app() -> Any:
    """The server's app (``uvicorn --factory outage:app``); the outbox from the environment."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, PlainTextResponse
    from starlette.routing import Route

    from pixelmirror import PixelMirror, PixelMirrorMiddleware

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    mirror = PixelMirror(dispatch="external", cookie_secure=False)
    starlette = Starlette(routes=[Route("/", page), Route("/health", health)])
    starlette.add_middleware(PixelMirrorMiddleware, mirror=mirror)
    return starlette


class BlackHole:
    """Accepts connections and reads them, never answers."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()

    @staticmethod
    def _swallow(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()


@contextlib.contextmanager
def serve(outbox: str) -> Iterator[str]:
    port = _free_port()
    env = dict(
        os.environ,
        # This checkout's pixelmirror, whatever the interpreter has installed.
        PYTHONPATH=os.pathsep.join([str(BENCH_DIR), str(ROOT / "src")]),
        PIXELMIRROR_PIXEL_ID=PIXEL_ID,
        PIXELMIRROR_ACCESS_TOKEN=ACCESS_TOKEN,
        PIXELMIRROR_SECRET_KEY=SECRET_KEY,
        PIXELMIRROR_OUTBOX=outbox,
    )
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "outage:app",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--log-level", "critical", "--no-access-log",
    ]  # fmt: skip
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            _pinned(command, SERVER_CPU), env=env, cwd=BENCH_DIR, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                _wait_ready(url + "/health", process)
            except RuntimeError:
                log.seek(0)
                raise RuntimeError(f"outage server failed:\n{log.read()[-2000:]}") from None
            yield url
        finally:
            stop(process)


def measure(url: str, seconds: float, cookie: str) -> dict[str, float]:
    """Load pages in one thread, time ``/health`` in another; latencies in ms."""
    stop = threading.Event()
    pages = 0
    headers = {"User-Agent": CHROME_UA, "Cookie": cookie}

    def load_pages() -> None:
        nonlocal pages
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            while not stop.is_set():
                client.get("/")
                pages += 1

    loader = threading.Thread(target=load_pages, daemon=True)
    loader.start()
    latencies: list[float] = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.perf_counter()
            client.get("/health")
            latencies.append((time.perf_counter() - start) * 1000)
    stop.set()
    loader.join(timeout=30)
    latencies.sort()
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max": latencies[-1],
        # A stalled event loop shows as a few very slow requests, more than in the p99.
        "over_250ms": sum(1 for ms in latencies if ms > 250),
        "health_requests": len(latencies),
        "pages": pages,
    }


def _redis_answers() -> bool:
    try:
        import redis
    except ImportError:
        return False
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def run(quick: bool) -> list[Row]:
    seconds = 5.0 if quick else 20.0
    cookie = returning_cookie()
    cases: dict[str, str] = {}
    stream = f"pixelmirror-bench-outage:{uuid.uuid4().hex}"
    if _redis_answers():
        cases["redis answers"] = f"{REDIS_URL}?stream={stream}"
    hole = BlackHole()
    cases["redis black hole"] = f"redis://127.0.0.1:{hole.port}/0?stream={stream}"
    rows = []
    try:
        for case, outbox in cases.items():
            with serve(outbox) as url:
                found = measure(url, seconds, cookie)
            rows.append(
                Row(
                    "outage",
                    f"/health p99 while / loads, {case}",
                    found["p99"],
                    "ms",
                    note=(
                        f"p50 {found['p50']:.1f} ms, worst {found['max']:.0f} ms, "
                        f"{found['over_250ms']:.0f} over 250 ms; "
                        f"{found['health_requests']:.0f} /health and {found['pages']:.0f} "
                        f"pages in {seconds:g} s"
                    ),
                    extra=found,
                )
            )
    finally:
        hole.close()
        if "redis answers" in cases:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            client.delete(stream, f"{stream}:dead", f"{stream}:tries")
            client.close()
    return rows


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(f"{row.case}: {row.value:.1f} {row.unit} ({row.note})")

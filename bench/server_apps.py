"""The apps the real servers load (benchmark 3): ``BENCH_VARIANT`` is ``bare``,
``pixelmirror`` or (Starlette only) ``session``; ``BENCH_PAGE=burn`` makes the Starlette page
burn 2 ms of CPU before it answers, as a template page does.

uvicorn: ``uvicorn --factory server_apps:starlette_app``; gunicorn: ``'server_apps:flask_app()'``.
The wrapped variants enqueue into a memory outbox with ``dispatch="external"`` (the request
path only, as in benchmarks 1 and 2; a thread acks what is queued every 50 ms), unless
``BENCH_GRAPH_URL`` names a FakeGraphAPI: then a dispatcher thread in the server process
sends the events there as they come.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from asgi_overhead import PAGE, build_apps, make_mirror
from starlette.requests import Request
from starlette.responses import HTMLResponse
from wsgi_overhead import make_flask

from pixelmirror import PixelMirror


def _mirror() -> PixelMirror:
    graph_url = os.environ.get("BENCH_GRAPH_URL")
    if graph_url:
        return make_mirror(dispatch="thread", graph_url=graph_url, flush_interval=0.2)
    mirror = make_mirror()
    threading.Thread(target=_drain, args=(mirror,), name="bench-drain", daemon=True).start()
    return mirror


def _drain(mirror: PixelMirror) -> None:
    """Take the queued events off the memory outbox every 50 ms, as a worker elsewhere
    would: a heap that grows for the whole run makes the collector's full passes ever longer
    (100 ms at 100,000 queued events), which no deployment has. Its CPU is counted."""
    outbox = mirror.outbox
    while True:
        time.sleep(0.05)
        while claims := outbox.claim(10_000, lease=60.0):
            outbox.ack(claims)


#: CPU a "template" page spends rendering.
BURN_SECONDS = 0.002


def _work(rounds: int) -> int:
    total = 0
    for n in range(rounds):
        total += n * n
    return total


def _rounds_for(seconds: float) -> int:
    """How many rounds of :func:`_work` take ``seconds`` of CPU here (the fastest of 5)."""
    probe = 20_000
    best = min(_timed(probe) for _ in range(5))
    return max(1, int(probe * seconds / best))


def _timed(rounds: int) -> float:
    start = time.thread_time()
    _work(rounds)
    return time.thread_time() - start


# A fixed amount of work per page, not a clock to watch: the work is the same in every
# variant, whatever else the process does. server.py measures it once and gives it to every
# server it starts: each server calibrating its own would give each variant its own work.
BURN_ROUNDS = int(os.environ.get("BENCH_BURN_ROUNDS") or _rounds_for(BURN_SECONDS))


async def burning_page(request: Request) -> HTMLResponse:
    _work(BURN_ROUNDS)
    return HTMLResponse(PAGE)


def starlette_app() -> Any:
    variant = os.environ.get("BENCH_VARIANT", "bare")
    endpoint = burning_page if os.environ.get("BENCH_PAGE") == "burn" else None
    # The mirror is unused by the bare and session apps: nothing of pixelmirror wraps them.
    mirror = _mirror() if variant == "pixelmirror" else make_mirror()
    return build_apps(mirror, endpoint)[variant]


def flask_app() -> Any:
    variant = os.environ.get("BENCH_VARIANT", "bare")
    return make_flask(variant, _mirror() if variant == "pixelmirror" else None)

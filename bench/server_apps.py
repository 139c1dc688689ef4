"""The apps the real servers load (benchmark 3): ``BENCH_VARIANT`` is ``bare`` or
``pixelmirror``.

uvicorn: ``uvicorn --factory server_apps:starlette_app``; gunicorn: ``'server_apps:flask_app()'``.
The wrapped variants enqueue into a memory outbox with ``dispatch="external"`` (the request
path only, as in benchmarks 1 and 2), unless ``BENCH_GRAPH_URL`` names a FakeGraphAPI: then
a dispatcher thread in the server process sends the events there as they come.
"""

from __future__ import annotations

import os
from typing import Any

from asgi_overhead import build_apps, make_mirror
from wsgi_overhead import make_flask

from pixelmirror import PixelMirror


def _mirror() -> PixelMirror:
    graph_url = os.environ.get("BENCH_GRAPH_URL")
    if graph_url:
        return make_mirror(dispatch="thread", graph_url=graph_url, flush_interval=0.2)
    return make_mirror()


def starlette_app() -> Any:
    variant = os.environ.get("BENCH_VARIANT", "bare")
    if variant == "bare":
        return build_apps(make_mirror())["bare"]  # the mirror is unused: nothing wraps
    return build_apps(_mirror())[variant]


def flask_app() -> Any:
    variant = os.environ.get("BENCH_VARIANT", "bare")
    return make_flask(variant, _mirror() if variant == "pixelmirror" else None)

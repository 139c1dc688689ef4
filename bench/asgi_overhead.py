"""1. Request overhead, ASGI: a Starlette page driven in-process with hand-built scopes.

Variants: the bare app; wrapped by pixelmirror (memory outbox, ``dispatch="external"``, so
only the request path is timed); wrapped by Starlette's ``SessionMiddleware`` (the app keeps a
visitor id in the session, the reference the claim is made against) and by ``GZipMiddleware``.
Two visits: a returning visitor (every cookie present and valid) and a first visit (none).

Then the durable outboxes: the returning visit wrapped by pixelmirror with the memory, SQLite
and Redis outboxes. Each round ends with the handoff flushed, inside the timing, so the writer
thread's CPU for every event is counted.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from harness import (
    ACCESS_TOKEN,
    BROWSER_HEADERS,
    PAGE,
    PIXEL_ID,
    SECRET_KEY,
    Row,
    cpu_ns,
    interleaved,
    median,
    paired_added,
    quiet_logs,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from pixelmirror import PixelMirror
from pixelmirror.asgi import PixelMirrorMiddleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Cookies a returning visitor's browser sends with every page, to every variant alike.
THIRD_PARTY_COOKIES = "_ga=GA1.1.1234567890.1700000000; theme=dark"


def make_mirror(**settings: Any) -> PixelMirror:
    defaults: dict[str, Any] = {
        "pixel_id": PIXEL_ID,
        "access_token": ACCESS_TOKEN,
        "secret_key": SECRET_KEY,
        "outbox": "memory://",
        "dispatch": "external",
        "cookie_secure": False,
        "queue_size": 1_000_000,
    }
    defaults.update(settings)
    return PixelMirror(**defaults)


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def page_with_session(request: Request) -> HTMLResponse:
    # The reference: a signed session cookie that remembers the visitor.
    if "vid" not in request.session:
        request.session["vid"] = secrets.token_urlsafe(16)
    return HTMLResponse(PAGE)


def build_apps(mirror: PixelMirror, endpoint: Any = None) -> dict[str, ASGIApp]:
    """The variants; ``endpoint`` replaces the page of bare and pixelmirror (the session
    variant keeps its own)."""
    plain = [Route("/", endpoint or page)]
    return {
        "bare": Starlette(routes=plain),
        "pixelmirror": Starlette(
            routes=plain, middleware=[Middleware(PixelMirrorMiddleware, mirror=mirror)]
        ),
        "session": Starlette(
            routes=[Route("/", page_with_session)],
            middleware=[Middleware(SessionMiddleware, secret_key=SECRET_KEY)],
        ),
        "gzip": Starlette(routes=plain, middleware=[Middleware(GZipMiddleware)]),
    }


def scope_for(cookie: str | None) -> Scope:
    headers = [(n.encode(), v.encode()) for n, v in BROWSER_HEADERS]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def call(app: ASGIApp, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    # Starlette writes into the scope (router, endpoint, path params): a fresh copy each time.
    await app(dict(scope), _receive, send)
    return sent


def set_cookies(messages: list[Message]) -> list[str]:
    start = messages[0]
    assert start["status"] == 200, start
    return [v.decode().split(";", 1)[0] for n, v in start["headers"] if n.lower() == b"set-cookie"]


def body_of(messages: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def returning_cookie(loop: asyncio.AbstractEventLoop, apps: dict[str, ASGIApp]) -> str:
    """The Cookie header of a visitor who saw the page before: what each variant set."""
    first = scope_for(None)
    jar = [THIRD_PARTY_COOKIES]
    for name in ("pixelmirror", "session"):
        jar += set_cookies(loop.run_until_complete(call(apps[name], first)))
    return "; ".join(jar)


def check(loop: asyncio.AbstractEventLoop, apps: dict[str, ASGIApp], cookie: str) -> None:
    """Each variant does what it is there for, on both visits (a bench that measures a
    pass-through is worthless)."""
    for scope, visit in ((scope_for(cookie), "returning"), (scope_for(None), "first")):
        bare = body_of(loop.run_until_complete(call(apps["bare"], scope)))
        assert bare == PAGE
        out = loop.run_until_complete(call(apps["pixelmirror"], scope))
        assert b"<script data-pixelmirror" in body_of(out), visit
        cookies = set_cookies(out)
        if visit == "returning":
            assert not cookies, cookies  # nothing new to remember
        else:
            assert any(c.startswith("_pm_vid=") for c in cookies), cookies
        out = loop.run_until_complete(call(apps["session"], scope))
        # Starlette signs a new cookie only when the session changed: on the first visit.
        assert any(c.startswith("session=") for c in set_cookies(out)) == (visit == "first")
        out = loop.run_until_complete(call(apps["gzip"], scope))
        assert (b"content-encoding", b"gzip") in out[0]["headers"]


def run(quick: bool = False) -> list[Row]:
    rounds, number = (3, 300) if quick else (15, 2000)
    loop = asyncio.new_event_loop()
    rows: list[Row] = []
    with quiet_logs():
        mirror = make_mirror()
        try:
            apps = build_apps(mirror)
            cookie = returning_cookie(loop, apps)
            check(loop, apps, cookie)

            def timer(app: ASGIApp, scope: Scope) -> Callable[[], float]:
                async def batch() -> None:
                    for _ in range(number):
                        await call(app, scope)

                def case() -> float:
                    start = cpu_ns()
                    loop.run_until_complete(batch())
                    elapsed = (cpu_ns() - start) / number / 1000
                    drain(mirror)
                    return elapsed

                return case

            for visit, scope in (("returning", scope_for(cookie)), ("first", scope_for(None))):
                for app in apps.values():  # warm up caches and code paths
                    for _ in range(50):
                        loop.run_until_complete(call(app, scope))
                drain(mirror)
                results = interleaved(
                    {name: timer(app, scope) for name, app in apps.items()}, rounds
                )
                rows += _rows("ASGI (Starlette)", visit, results, "session", "SessionMiddleware")
            rows += _outbox_rows(loop, cookie, rounds, number)
        finally:
            mirror.close(timeout=0)
            loop.close()
    return rows


REDIS_URL = "redis://127.0.0.1:6379/0"
#: Most a durable outbox may add to a request, the writer's share included.
OUTBOX_TARGET_US = 15.0


def _outbox_rows(
    loop: asyncio.AbstractEventLoop, cookie: str, rounds: int, number: int
) -> list[Row]:
    """The returning visit with each outbox; the handoff flushed inside each round's timing."""
    scope = scope_for(cookie)
    bench = "Request path by outbox (Starlette)"
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"memory": "memory://", "sqlite": f"sqlite:///{tmp}/outbox.db"}
        stream = f"pmbench:{uuid.uuid4().hex[:12]}"
        note = ""
        try:
            probe = make_mirror(outbox=f"{REDIS_URL}?stream={stream}")
            probe.outbox.counts()
            probe.close(timeout=0)
            urls["redis"] = f"{REDIS_URL}?stream={stream}"
        except Exception as exc:
            note = f"redis outbox unavailable: {type(exc).__name__}: {exc}"[:160]
        mirrors = {name: make_mirror(outbox=url) for name, url in urls.items()}
        try:
            apps = {
                name: Starlette(
                    routes=[Route("/", page)],
                    middleware=[Middleware(PixelMirrorMiddleware, mirror=mirror)],
                )
                for name, mirror in mirrors.items()
            }

            def timer(name: str) -> Callable[[], float]:
                app, mirror = apps[name], mirrors[name]

                async def batch() -> None:
                    for _ in range(number):
                        await call(app, scope)

                def case() -> float:
                    start = cpu_ns()
                    loop.run_until_complete(batch())
                    if mirror.handoff is not None and not mirror.handoff.flush(60):
                        raise RuntimeError(f"{name}: the handoff was not written in time")
                    elapsed = (cpu_ns() - start) / number / 1000
                    drain(mirror)
                    return elapsed

                return case

            for name, app in apps.items():  # warm up; every variant injects
                for _ in range(50):
                    out = loop.run_until_complete(call(app, scope))
                assert b"<script data-pixelmirror" in body_of(out), name
                timer(name)()
            results = interleaved({name: timer(name) for name in apps}, rounds)
        finally:
            for mirror in mirrors.values():
                mirror.close(timeout=5)
            if "redis" in urls:
                _drop_stream(stream)
    rows = [Row(bench, "returning: memory outbox", median(results["memory"]), "µs/req")]
    for name in ("sqlite", "redis"):
        if name not in results:
            rows.append(Row(bench, f"returning: {name} outbox", 0.0, "", note=note))
            continue
        added = paired_added(results, name, "memory")
        rows.append(
            Row(
                bench,
                f"returning: {name} outbox",
                median(results[name]),
                "µs/req",
                target=f"≤ +{OUTBOX_TARGET_US:g} µs vs memory",
                met=added <= OUTBOX_TARGET_US,
                note=f"{added:+.1f} µs vs the memory outbox (writer thread included)",
                extra={"added_us": added, "runs_us": [round(v, 2) for v in results[name]]},
            )
        )
    return rows


def _drop_stream(stream: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{stream}*"):
            client.delete(key)
    finally:
        client.close()


def drain(mirror: PixelMirror) -> None:
    """Empty the memory outbox between batches, outside the timing: a dispatcher would."""
    outbox = mirror.outbox
    while claims := outbox.claim(100_000, lease=60.0):
        outbox.ack(claims)


#: Most pixelmirror may add, as a multiple of the reference's added cost.
TARGETS = {
    ("ASGI (Starlette)", "returning"): 1.5,
    ("ASGI (Starlette)", "first"): 1.8,
    ("WSGI (Flask)", "returning"): 1.0,
    ("WSGI (Flask)", "first"): 1.0,
}


def _rows(
    bench: str, visit: str, results: dict[str, list[float]], ref: str, ref_label: str
) -> list[Row]:
    rows = []
    pm_added = paired_added(results, "pixelmirror", "bare")
    ref_added = paired_added(results, ref, "bare")
    for name, values in results.items():
        row = Row(bench, f"{visit}: {name}", median(values), "µs/req")
        if name != "bare":
            row.extra["added_us"] = paired_added(results, name, "bare")
            row.note = f"+{row.extra['added_us']:.1f} µs"
        if name == "pixelmirror":
            row.ratio = pm_added / ref_added if ref_added > 0 else None
            row.ratio_label = f"added / {ref_label}'s added"
            target = TARGETS[bench, visit]
            row.target = f"≤ {target:g}"
            row.met = row.ratio is not None and row.ratio <= target
        row.extra["runs_us"] = [round(v, 2) for v in values]
        rows.append(row)
    return rows


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(r)

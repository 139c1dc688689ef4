from __future__ import annotations

import asyncio
import gzip
import random
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import redisutil
from conftest import MakeMirror, record_outbox_calls
from pixelmirror import (
    EVENTS_HEADER,
    PixelMirror,
    PixelMirrorMiddleware,
    TrackedEvent,
    current_event,
    current_visit,
    track,
    tracked,
)
from pixelmirror.asgi import Message, Receive, Scope, Send
from pixelmirror.testing import FakeGraphAPI
from pixelmirror.web import asgi as asgi_adapter
from webkit import CHROME, HTML, browser_events

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def http_scope(
    path: str = "/", method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"shop.example"), (b"user-agent", CHROME.encode()), *(headers or [])],
        "client": ("198.51.100.7", 50000),
        "server": ("shop.example", 80),
    }


def app_sending(*messages: Message) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for message in messages:
            await send(message)

    return app


def start(status: int = 200, *headers: tuple[bytes, bytes]) -> Message:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


HTML_TYPE = (b"content-type", b"text/html; charset=utf-8")


def run(app: ASGIApp, scope: Scope | None = None) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope or http_scope(), receive, send))
    return sent


def as_sent(messages: list[Message]) -> tuple[list[Message], bytes]:
    """What the client gets: the messages other than body, and the body bytes (a holding
    middleware may regroup body chunks)."""
    others = [m for m in messages if m["type"] != "http.response.body"]
    return others, b"".join(m["body"] for m in messages if m["type"] == "http.response.body")


def headers_of(message: Message) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in message["headers"]:
        found.setdefault(name.decode(), []).append(value.decode())
    return found


def test_a_page_is_held_then_sent_spliced_in_one_start_and_body(
    mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    app = app_sending(
        start(200, HTML_TYPE, (b"content-length", str(len(HTML)).encode())), body(HTML)
    )
    sent = run(mirror.asgi(app))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    page = sent[1]["body"]
    assert b"<script data-pixelmirror" in page.partition(b"</head>")[0]
    headers = headers_of(sent[0])
    assert headers["content-length"] == [str(len(page))]
    assert headers["cache-control"][0].startswith("private")
    assert any(c.startswith("_pm_vid=") for c in headers["set-cookie"])
    assert mirror.flush(timeout=10)
    [(name, event_id)] = browser_events(page)
    assert [(e.event_name, e.event_id) for e in fake.events] == [(name, event_id)]
    assert fake.events[0].user_data["client_ip_address"] == "198.51.100.7"
    assert fake.events[0].data["event_source_url"] == "http://shop.example/"


def test_start_is_held_until_the_head_closes_then_streaming_continues(mirror: PixelMirror) -> None:
    app = app_sending(
        start(200, HTML_TYPE),
        body(b"<html><head>", more=True),
        body(b"<title>s</title></head><body>", more=True),
        body(b"tail</body></html>"),
    )
    sent = run(mirror.asgi(app))
    assert [m["type"] for m in sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
    ]
    assert sent[1]["body"].startswith(b"<html><head><title>s</title><script data-pixelmirror")
    assert sent[1]["body"].endswith(b"</head><body>")
    assert sent[1]["more_body"] is True
    assert sent[2] == body(b"tail</body></html>")


@pytest.mark.parametrize(
    ("method", "messages"),
    [
        pytest.param(
            "GET", [start(200, (b"content-type", b"application/json")), body(b"{}")], id="json"
        ),
        pytest.param(
            "GET",
            [start(200, HTML_TYPE, (b"content-encoding", b"gzip")), body(gzip.compress(HTML))],
            id="gzip-html",
        ),
        pytest.param("HEAD", [start(200, HTML_TYPE), body(b"")], id="head"),
        pytest.param("GET", [start(304, (b"etag", b'"x"')), body(b"")], id="304"),
        pytest.param(
            "GET",
            [start(200, HTML_TYPE), body(b"<p>no", more=True), body(b" marker</p>")],
            id="streamed-no-marker",
        ),
        pytest.param(
            "GET",
            [start(200, HTML_TYPE), {"type": "http.response.pathsend", "path": "/srv/page.html"}],
            id="pathsend",
        ),
    ],
)
def test_ineligible_responses_pass_byte_identical(
    mirror: PixelMirror, fake: FakeGraphAPI, method: str, messages: list[Message]
) -> None:
    scope = http_scope(method=method)
    assert as_sent(run(mirror.asgi(app_sending(*messages)), scope)) == as_sent(messages)
    assert mirror.flush(timeout=5)
    assert fake.events == []


def test_websockets_and_other_scopes_pass_through(mirror: PixelMirror) -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Message:
        return {}

    async def send(message: Message) -> None:
        pass

    scope: Scope = {"type": "websocket", "path": "/ws", "headers": []}
    asyncio.run(mirror.asgi(app)(scope, receive, send))
    assert seen == [(scope, receive, send)]


def test_lifespan_shutdown_flushes_the_outbox(make_mirror: MakeMirror, fake: FakeGraphAPI) -> None:
    mirror = make_mirror(flush_interval=3600)
    mirror.send("Lead", action_source="system_generated", user_data={"external_id": "x"})
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        assert len(fake.events) == 1  # flushed before the app hears of the shutdown
        await send({"type": "lifespan.shutdown.complete"})

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(mirror.asgi(app)({"type": "lifespan"}, receive, send))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_lifespan_shutdown_reaches_the_app_with_the_outbox_unavailable(
    make_mirror: MakeMirror, down_redis: str
) -> None:
    mirror = make_mirror(outbox=down_redis, shutdown_timeout=0.3)
    mirror.send("Lead", action_source="system_generated", user_data={"external_id": "x"})
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    heard: list[str] = []
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for done in ("lifespan.startup.complete", "lifespan.shutdown.complete"):
            heard.append((await receive())["type"])  # the app's own hooks would run here
            await send({"type": done})

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(mirror.asgi(app)({"type": "lifespan"}, receive, send))
    assert heard == ["lifespan.startup", "lifespan.shutdown"]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def request(app: ASGIApp, path: str) -> tuple[int, bytes]:
    """One GET through ``app`` on the running loop: the status and the body."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(http_scope(path), receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_an_unrelated_request_completes_while_the_writer_hangs_on_redis(
    make_mirror: MakeMirror,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/health":
            await send(start(200, (b"content-type", b"text/plain")))
            await send(body(b"ok"))
        else:
            await send(start(200, HTML_TYPE))
            await send(body(HTML))

    with redisutil.black_hole() as hole:
        mirror = make_mirror(outbox=hole.url(timeout=30), dispatch="external")
        wrapped = mirror.asgi(app)

        async def visit() -> tuple[int, bytes]:
            status, page = await request(wrapped, "/")  # its PageView goes to the handoff
            assert status == 200
            assert b"data-pixelmirror" in page
            # The writer has sent the PageView to Redis and waits up to 30 s for an answer.
            assert await asyncio.to_thread(hole.received.wait, 10)
            return await request(wrapped, "/health")

        assert asyncio.run(visit()) == (200, b"ok")
        assert mirror.handoff is not None
        assert mirror.handoff.held == 1  # the writer is still stuck on Redis
    # The hole is closed: the writer's write fails at once, and close() gives up after 1 s.


def test_no_outbox_call_runs_on_the_event_loop_thread(
    make_mirror: MakeMirror, fake: FakeGraphAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = make_mirror(outbox=f"sqlite:///{tmp_path / 'outbox.db'}")
    calls = record_outbox_calls(mirror.outbox, monkeypatch)
    app = starlette_shop(mirror)

    async def visit() -> tuple[int, list[tuple[str, int]]]:
        await shop_visit(app)  # pages, a tracked JSON call, a tracked redirect
        return threading.get_ident(), list(calls)

    loop_thread, during_the_loop = asyncio.run(visit())
    assert mirror.flush(timeout=10)
    assert {event.event_name for event in fake.events} >= {"PageView", "AddToCart", "Purchase"}
    assert ("write", loop_thread) not in calls
    assert any(name == "write" for name, _ in calls)  # the writer did write, elsewhere
    assert [name for name, thread in during_the_loop if thread == loop_thread] == []


def starlette_shop(mirror: PixelMirror) -> Any:
    starlette = pytest.importorskip("starlette.applications")
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    async def page(request: Request) -> Response:
        return HTMLResponse(HTML)

    @track("Purchase")
    async def checkout(request: Request) -> Response:
        current_event().custom_data.update(value=10, currency="EUR")
        current_event().server_only.update(margin=3)
        return RedirectResponse("/thanks", status_code=303)

    @track("AddToCart")
    def cart(request: Request) -> Response:  # sync: Starlette runs it in a thread
        current_event().custom_data.update(content_ids=["tee"])
        return JSONResponse({"ok": True})

    app = starlette.Starlette(
        routes=[
            Route("/", page),
            Route("/thanks", page),
            Route("/checkout", checkout, methods=["POST"]),
            Route("/api/cart", cart, methods=["POST"]),
        ]
    )
    app.add_middleware(PixelMirrorMiddleware, mirror=mirror)
    return app


def shopper(app: Any) -> httpx.AsyncClient:
    """A visitor of ``app`` at http://shop.example: Chrome, from 198.51.100.7."""
    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 1234))
    return httpx.AsyncClient(
        transport=transport, base_url="http://shop.example", headers={"User-Agent": CHROME}
    )


async def shop_visit(app: Any) -> tuple[httpx.Response, httpx.Response]:
    async with shopper(app) as client:
        await client.get("/")
        cart = await client.post("/api/cart")
        thanks = await client.post("/checkout", follow_redirects=True)
    return cart, thanks


def test_starlette_sync_and_async_tracked_views(mirror: PixelMirror, fake: FakeGraphAPI) -> None:
    cart, thanks = asyncio.run(shop_visit(starlette_shop(mirror)))
    announced = cart.headers[EVENTS_HEADER]
    assert '"event": "AddToCart"' in announced
    fired = browser_events(thanks.content)
    assert [name for name, _ in fired] == ["PageView", "Purchase"]
    assert mirror.flush(timeout=10)
    received = {(e.event_name, e.event_id): e for e in fake.events}
    assert set(fired) <= set(received)
    assert sum(name == "PageView" for name, _ in received) == 2
    purchase = received[fired[1]]
    assert purchase.custom_data == {"value": 10, "currency": "EUR", "margin": 3}
    assert b"margin" not in thanks.content
    externals = {e.user_data["external_id"] for e in fake.events}
    assert len(externals) == 1  # one visitor across pages, redirect and JSON


def test_fastapi_keeps_the_view_signature_and_tracks(
    mirror: PixelMirror, fake: FakeGraphAPI
) -> None:
    fastapi = pytest.importorskip("fastapi")
    from fastapi.responses import HTMLResponse

    app = fastapi.FastAPI()
    app.add_middleware(PixelMirrorMiddleware, mirror=mirror)

    @app.get("/product/{sku}", response_class=HTMLResponse)
    @track("ViewContent")
    async def product(sku: str, qty: int = 1) -> str:  # FastAPI reads this signature
        current_event().custom_data.update(content_ids=[sku], num_items=qty)
        return HTML.decode()

    async def visit() -> httpx.Response:
        async with shopper(app) as client:
            return await client.get("/product/tee", params={"qty": 2})

    page = asyncio.run(visit())
    fired = browser_events(page.content)
    assert [name for name, _ in fired] == ["PageView", "ViewContent"]
    assert mirror.flush(timeout=10)
    view = next(e for e in fake.events if e.event_name == "ViewContent")
    assert view.event_id == fired[1][1]
    assert view.custom_data == {"content_ids": ["tee"], "num_items": 2}


def test_inside_gzip_the_compressed_page_carries_the_pixel(mirror: PixelMirror) -> None:
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    async def page(request: Any) -> HTMLResponse:
        return HTMLResponse(HTML * 20)  # big enough for GZipMiddleware to compress

    app = Starlette(
        routes=[Route("/", page)],
        middleware=[Middleware(GZipMiddleware), Middleware(PixelMirrorMiddleware, mirror=mirror)],
    )

    async def visit() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://shop.example"
        ) as client:
            return await client.get("/", headers={"User-Agent": CHROME, "Accept-Encoding": "gzip"})

    response = asyncio.run(visit())
    assert response.headers["content-encoding"] == "gzip"
    assert [name for name, _ in browser_events(response.content)] == ["PageView"]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_fastapi_dependency_tracks_the_event_it_injects(
    mirror: PixelMirror, fake: FakeGraphAPI, asynchronous: bool
) -> None:
    fastapi = pytest.importorskip("fastapi")
    from fastapi.responses import HTMLResponse

    app = fastapi.FastAPI()
    app.add_middleware(PixelMirrorMiddleware, mirror=mirror)
    purchase = fastapi.Depends(tracked("Purchase"))

    if asynchronous:

        @app.get("/thanks/{order}", response_class=HTMLResponse)
        async def thanks_async(order: str, event: TrackedEvent = purchase) -> str:
            event.custom_data.update(value=49.99, currency="USD", order_id=order)
            event.user_data.update(email="ann@example.com")
            return HTML.decode()
    else:

        @app.get("/thanks/{order}", response_class=HTMLResponse)
        def thanks_sync(order: str, event: TrackedEvent = purchase) -> str:
            event.custom_data.update(value=49.99, currency="USD", order_id=order)
            event.user_data.update(email="ann@example.com")
            return HTML.decode()

    async def visit() -> httpx.Response:
        async with shopper(app) as client:
            return await client.get("/thanks/A-17")

    page = asyncio.run(visit())
    assert page.status_code == 200
    fired = browser_events(page.content)
    assert [name for name, _ in fired] == ["PageView", "Purchase"]
    assert mirror.flush(timeout=10)
    (server,) = [e for e in fake.events if e.event_name == "Purchase"]
    assert server.event_id == fired[1][1]
    assert server.custom_data == {"value": 49.99, "currency": "USD", "order_id": "A-17"}
    assert "em" in server.user_data
    assert b"ann@example.com" not in page.content


def test_the_dependency_outside_a_request_makes_an_event_that_goes_nowhere() -> None:
    event = tracked("Lead")()
    assert event.event_name == "Lead"
    assert event.event_id
    assert current_visit() is None
    with pytest.raises(ValueError, match="pixel_id"):
        tracked("Lead", pixel_id="abc")


@pytest.mark.parametrize("seed", range(4))
def test_header_names_read_and_written_through_their_caches_as_without_them(seed: int) -> None:
    rng = random.Random(seed)
    names = [b"content-type", b"Content-Length", b"x-\xe9", b"SET-COOKIE", b"", b"x-a"]
    values = [b"", b"text/html", b"12", b"caf\xe9", b"a=1; Path=/"]
    for _ in range(500):
        raw = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randint(0, 5))]
        decoded = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]
        assert asgi_adapter._decode(raw) == decoded
        assert asgi_adapter._decode(iter(raw)) == decoded  # any iterable, as ASGI allows
        encoded = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in decoded]
        assert asgi_adapter._encode(decoded) == encoded
        if rng.random() < 0.1:  # now and then, names the caches have not seen yet
            asgi_adapter._DECODED.clear()
            asgi_adapter._ENCODED.clear()

"""``@track`` above the route decorator: the view runs untracked, so the first request logs
an error naming it (Flask, Starlette, FastAPI), and a route object is refused at once."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from pixelmirror import PixelMirror, PixelMirrorMiddleware, track
from pixelmirror.web.routes import misplaced_views, warn_misplaced_tracks
from webkit import CHROME


def misplaced_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and "never runs" in r.getMessage()
    ]


def test_flask_track_above_the_route_is_named_once_at_the_first_request(
    mirror: PixelMirror, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask(__name__)
    mirror.init_app(app)  # before the routes, as most apps do

    @track("Purchase")
    @app.post("/buy")
    def buy() -> str:
        return "bought"

    @app.get("/fine")
    @track("Lead")
    def fine() -> str:
        return "fine"

    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        assert client.post("/buy", headers={"User-Agent": CHROME}).status_code == 200
        assert client.get("/fine", headers={"User-Agent": CHROME}).status_code == 200
    (error,) = misplaced_errors(caplog)
    assert "@track('Purchase') on buy never runs" in error
    assert "put @track below" in error


async def asgi_get(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://shop.example", headers={"User-Agent": CHROME}
    ) as client:
        return await client.get(path)


@pytest.mark.parametrize("wrapped", [False, True], ids=["add_middleware", "mirror.asgi"])
def test_fastapi_track_above_the_route_is_named_at_the_first_request(
    mirror: PixelMirror, caplog: pytest.LogCaptureFixture, wrapped: bool
) -> None:
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()
    if not wrapped:
        app.add_middleware(PixelMirrorMiddleware, mirror=mirror)

    @track("ViewContent")
    @app.get("/product/{sku}")
    async def product(sku: str) -> dict[str, str]:
        return {"sku": sku}

    @app.get("/lead")
    @track("Lead")
    async def lead() -> dict[str, str]:
        return {}

    served = mirror.asgi(app) if wrapped else app
    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        assert asyncio.run(asgi_get(served, "/product/tee")).status_code == 200
        assert asyncio.run(asgi_get(served, "/lead")).status_code == 200
    (error,) = misplaced_errors(caplog)
    assert "@track('ViewContent') on /product/{sku} never runs" in error


def test_starlette_views_are_found_inside_mounts(
    mirror: PixelMirror, caplog: pytest.LogCaptureFixture
) -> None:
    def buy(request: Request) -> PlainTextResponse:
        return PlainTextResponse("bought")

    app = Starlette(routes=[Mount("/shop", routes=[Route("/buy", buy)])])
    track("Purchase")(buy)  # wrapped after the route took it: what @track above a route does
    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        response = asyncio.run(asgi_get(mirror.asgi(app), "/shop/buy"))
    assert response.status_code == 200
    (error,) = misplaced_errors(caplog)
    assert "@track('Purchase') on /buy never runs" in error


def test_well_placed_tracks_are_not_reported() -> None:
    app = Flask(__name__)

    @app.get("/a")
    @track("Lead")
    def a() -> str:
        return "a"

    @app.get("/b")
    @track("Purchase")
    @track("Lead")  # stacked: the route holds the outer wrapper, which is marked
    def b() -> str:
        return "b"

    assert misplaced_views(app) == []


@pytest.mark.parametrize(
    "route",
    [
        pytest.param(Route("/buy", lambda request: None), id="starlette-route"),
        pytest.param(Mount("/shop", routes=[]), id="starlette-mount"),
        pytest.param(object(), id="object"),
    ],
)
def test_track_refuses_a_route_object_saying_to_put_it_below(route: object) -> None:
    with pytest.raises(TypeError, match="put @track below the route decorator"):
        track("Purchase")(route)  # type: ignore[arg-type]


def test_an_unreadable_route_table_never_breaks_a_request() -> None:
    class Odd:
        @property
        def routes(self) -> list[object]:
            raise RuntimeError("no routes today")

    warn_misplaced_tracks(Odd())  # logs at DEBUG, raises nothing

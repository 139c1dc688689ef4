"""The example shops, end to end: page → product → cart (JSON) → checkout POST → redirect →
thank-you page, against a FakeGraphAPI served on loopback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from conftest import PIXEL
from djangokit import django_shop
from pixelmirror import EVENTS_HEADER, PixelMirror
from pixelmirror.testing import FakeGraphAPI
from servers import load_example, load_example_helper, serve_asgi, serve_wsgi
from webkit import CHROME, browser_events, page_external_id

EMAIL = "ann@example.com"


def shop_visit(base_url: str) -> list[httpx.Response]:
    with httpx.Client(base_url=base_url, headers={"User-Agent": CHROME}) as client:
        return [
            client.get("/"),
            client.get("/product/tee"),
            client.post("/api/cart", json={"sku": "tee"}),
            client.post("/checkout", data={"sku": "tee", "email": EMAIL}, follow_redirects=True),
        ]


@pytest.mark.parametrize("name", ["flask_app", "starlette_app", "django_app"])
def test_example_shop_pairs_every_browser_event_with_its_server_twin(
    served_fake: tuple[FakeGraphAPI, str], name: str, request: pytest.FixtureRequest
) -> None:
    fake, _ = served_fake
    module = django_shop(request) if name == "django_app" else load_example(name)
    serve = serve_asgi if name == "starlette_app" else serve_wsgi
    try:
        with serve(module.app) as base_url:
            responses = shop_visit(base_url)
        home, product, cart, thanks = responses
        assert [r.status_code for r in responses] == [200, 200, 200, 200]
        assert thanks.url.path == "/thanks"
        assert module.mirror.flush(timeout=15)
    finally:
        module.mirror.close(timeout=1)

    received = {(e.event_name, e.event_id): e for e in fake.events}
    pages = [home, product, thanks]
    fired = [event for page in pages for event in browser_events(page.content)]
    announced = [(e["event"], e["eventID"]) for e in json.loads(cart.headers[EVENTS_HEADER])]
    assert [n for n, _ in fired] == ["PageView", "PageView", "ViewContent", "PageView", "Purchase"]
    # Every browser event has its server twin: same name, same id, same pixel.
    assert set(fired + announced) == set(received)
    assert len(fake.events) == len(received)  # nothing mirrored twice
    assert {e.pixel_id for e in fake.events} == {PIXEL}

    # One visitor on both channels: the page's external_id and the server-minted _fbp.
    external_ids = {page_external_id(p.content) for p in pages}
    assert len(external_ids) == 1
    fbp = home.cookies.get("_fbp") or ""
    assert fbp.startswith("fb.")
    for event in fake.events:
        assert event.user_data["external_id"] in external_ids
        assert event.user_data["fbp"] == fbp

    purchase = next(e for (n, _), e in received.items() if n == "Purchase")
    assert purchase.custom_data["margin"] == 0.4
    assert purchase.custom_data["predicted_ltv"] == 120.0
    assert len(purchase.user_data["em"]) == 64
    for page in pages:
        html = page.text
        assert "margin" not in html
        assert "predicted_ltv" not in html
        assert EMAIL not in html
        assert purchase.user_data["em"] not in html


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``examples/demo.py``, with the log level and loopback servers it sets up undone after."""
    for name in ("PIXELMIRROR_PIXEL_ID", "PIXELMIRROR_ACCESS_TOKEN", "PIXELMIRROR_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    logger = logging.getLogger("pixelmirror")
    level = logger.level
    module = load_example_helper("demo")
    try:
        yield module
    finally:
        module._demo_servers.close()
        logger.setLevel(level)


def test_demo_settings_without_a_token_send_to_a_fake_that_prints_what_meta_receives(
    demo: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = demo.demo_settings({})
    assert settings["pixel_id"] == demo.DEMO_PIXEL_ID
    assert settings["cookie_secure"] is False
    assert settings["graph_url"].startswith("http://127.0.0.1:")
    mirror = PixelMirror(**settings)
    try:
        event_id = mirror.send(
            "Lead", action_source="system_generated", user_data={"external_id": "cust-1"}
        )
        assert mirror.flush(timeout=15)
    finally:
        mirror.close(timeout=1)
    out = capsys.readouterr().out
    assert f"CAPI goes to a FakeGraphAPI at {settings['graph_url']}" in out
    assert f"CAPI    <- Lead eventID={event_id}" in out


def test_demo_settings_leave_configured_values_to_the_environment(demo: ModuleType) -> None:
    environ = {
        "PIXELMIRROR_PIXEL_ID": PIXEL,
        "PIXELMIRROR_ACCESS_TOKEN": "EAAB-real",
        "PIXELMIRROR_SECRET_KEY": "k" * 32,
        "PIXELMIRROR_COOKIE_SECURE": "true",
    }
    assert demo.demo_settings(environ) == {}


@pytest.mark.parametrize("name", ["flask_app", "starlette_app"])
def test_example_start_up_note_is_true_curl_gets_the_page_untouched_a_browser_agent_the_pixel(
    demo: ModuleType, name: str
) -> None:
    module = load_example(name)
    assert "demo.start_up_note(" in Path(module.__file__ or "").read_text()
    serve = serve_wsgi if name == "flask_app" else serve_asgi
    try:
        with serve(module.app) as base_url:
            note = demo.start_up_note(f"{base_url}/")
            curl = httpx.get(f"{base_url}/", headers={"User-Agent": "curl/8.5.0"})
            as_browser = httpx.get(f"{base_url}/", headers={"User-Agent": demo.BROWSER_AGENT})
    finally:
        module.mirror.close(timeout=1)
    assert "curl gets the page untouched" in note
    assert f"curl -A '{demo.BROWSER_AGENT}' {base_url}/" in note
    assert f"open {base_url}/ in a browser" in note
    assert browser_events(curl.content) == []
    assert "set-cookie" not in curl.headers
    assert [n for n, _ in browser_events(as_browser.content)] == ["PageView"]

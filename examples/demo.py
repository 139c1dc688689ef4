"""Settings for trying the example shops without a Meta account."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Mapping
from typing import Any

from pixelmirror.testing import FakeGraphAPI, ReceivedEvent

#: The pixel id :func:`demo_settings` uses when none is configured.
DEMO_PIXEL_ID = "1234567890"

# Servers demo_settings() started; they live as long as the process.
_demo_servers = contextlib.ExitStack()


def demo_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings to try pixelmirror without a Meta account: ``PixelMirror(**demo_settings())``.

    Fills in what the environment leaves out: a pixel id, a per-process signing key, cookies
    over plain http. Without ``PIXELMIRROR_ACCESS_TOKEN`` it serves a :class:`FakeGraphAPI`
    on loopback for the life of the process and prints every event Meta would receive;
    pixelmirror's debug log shows the events each page fires in the browser. Not for
    production: the signing key changes at every start.
    """
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    if not environ.get("PIXELMIRROR_PIXEL_ID"):
        settings["pixel_id"] = DEMO_PIXEL_ID
    if not environ.get("PIXELMIRROR_SECRET_KEY"):
        settings["secret_key"] = secrets.token_urlsafe(32)
    if not environ.get("PIXELMIRROR_COOKIE_SECURE"):
        settings["cookie_secure"] = False  # the demo runs over http://127.0.0.1
    if not environ.get("PIXELMIRROR_ACCESS_TOKEN"):
        fake = FakeGraphAPI(on_event=print_server_copy)
        url = _demo_servers.enter_context(fake.serve())
        settings.update(access_token="demo-token", graph_url=url, flush_interval=0.2)
        print(f"pixelmirror demo: CAPI goes to a FakeGraphAPI at {url}", flush=True)
        logging.basicConfig(format="%(message)s")
        logging.getLogger("pixelmirror").setLevel(logging.DEBUG)
    return settings


#: A browser's User-Agent, for curl: pixelmirror leaves pages for crawlers and HTTP libraries
#: (curl's own User-Agent among them) untouched, without a pixel or a server event.
BROWSER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36"
)


def start_up_note(url: str) -> str:
    """What an example shop says at start: where to see the pixel, and why curl does not."""
    return (
        f"pixelmirror demo: open {url} in a browser to see the pixel and its server twins.\n"
        "pixelmirror demo: curl gets the page untouched: its User-Agent looks like a "
        "crawler's, which gets no pixel and no server event.\n"
        f"pixelmirror demo: to see the pixel with curl, say it is a browser: "
        f"curl -A '{BROWSER_AGENT}' {url}"
    )


def print_server_copy(event: ReceivedEvent) -> None:
    """Print one line for an event Meta would receive, to read beside the browser's."""
    user = event.user_data
    print(
        f"pixelmirror demo: CAPI    <- {event.event_name} eventID={event.event_id} "
        f"external_id={str(user.get('external_id'))[:12]}... fbp={user.get('fbp')} "
        f"custom_data={json.dumps(event.custom_data)}",
        flush=True,
    )

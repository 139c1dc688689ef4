"""Reading what the middleware put in a page."""

from __future__ import annotations

import re

CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
HTML = b"<!doctype html><html><head><title>t</title></head><body><p>hello</p></body></html>"

_EVENT_CALL = re.compile(
    r'fbq\("(track|trackCustom|trackSingle|trackSingleCustom)",(?:"\d+",)?"([^"]+)",'
    r'.*?\{"eventID":"([^"]+)"\}\);'
)
_EXTERNAL_ID = re.compile(r"\"external_id\":\"([0-9a-f]{64})\"")


def browser_events(html: str | bytes) -> list[tuple[str, str]]:
    """``(event name, eventID)`` of every fbq track call in a page, in order."""
    text = html.decode() if isinstance(html, bytes) else html
    return [(name, event_id) for _, name, event_id in _EVENT_CALL.findall(text)]


def page_external_id(html: str | bytes) -> str | None:
    text = html.decode() if isinstance(html, bytes) else html
    match = _EXTERNAL_ID.search(text)
    return match.group(1) if match else None

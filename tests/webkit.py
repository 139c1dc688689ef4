"""Driving WSGI apps by hand, and reading what the middleware put in a page."""

from __future__ import annotations

import re
import wsgiref.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment


Headers = list[tuple[str, str]]

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


def environ(path: str = "/", method: str = "GET", **headers: str) -> WSGIEnvironment:
    env: WSGIEnvironment = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "REMOTE_ADDR": "203.0.113.9",
    }
    wsgiref.util.setup_testing_defaults(env)
    env["HTTP_USER_AGENT"] = CHROME
    for name, value in headers.items():
        env[f"HTTP_{name.upper()}"] = value
    return env


def call(app: Any, env: WSGIEnvironment | None = None) -> tuple[str, Headers, bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: Headers, exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, headers
        return lambda data: None

    result = app(env or environ(), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close:
            close()
    return seen["status"], seen["headers"], body


def header(headers: Headers, name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name.lower()]

"""Graph's wire format as the fake speaks it: reading a request, writing the answers.

:func:`parse_request` takes parameters from a JSON object body, a form-encoded or multipart
body or the query string (and the token from an ``Authorization`` header), the ways Graph
takes them; the rest builds Graph's success and error bodies, and the stock bodies of
injected faults.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import secrets
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from pixelmirror.testing.records import RecordedRequest
from pixelmirror.testing.rules import MAX_EVENTS_PER_REQUEST, SUBCODE_OBJECT_NOT_FOUND

_PATH = re.compile(r"/(?:(?P<version>[^/]+)/)?(?P<pixel>[0-9]+)/events/?")
_VERSION = re.compile(r"v([0-9]+)\.([0-9]+)")
_SUBCODE_UNKNOWN_ERROR = 99

_SERVICE_UNAVAILABLE = (
    b"<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>"
    b"<body><h1>Service Unavailable</h1>"
    b"<p>Sorry, something went wrong. We're working on getting this fixed as soon as we can.</p>"
    b"</body></html>\n"
)
_THROTTLE_MESSAGES = {
    17: "(#17) User request limit reached",
    80004: "(#80004) There have been too many calls to this ad-account. Wait a bit and try again.",
}


@dataclass
class Parsed:
    """A request as the fake reads it; ``*_error`` says why a part could not be read."""

    method: str
    path: str
    api_version: str | None
    pixel_id: str | None
    params: dict[str, Any]
    params_error: str | None
    data: list[Any] | None
    data_error: str | None

    def string(self, name: str) -> str | None:
        value = self.params.get(name)
        return value if isinstance(value, str) else None

    def recorded(
        self, status: int | None, error: Mapping[str, object] | None = None
    ) -> RecordedRequest:
        code = error.get("code") if error is not None else None
        subcode = error.get("error_subcode") if error is not None else None
        return RecordedRequest(
            pixel_id=self.pixel_id,
            api_version=self.api_version,
            access_token=self.string("access_token"),
            test_event_code=self.string("test_event_code"),
            partner_agent=self.string("partner_agent"),
            appsecret_proof=self.string("appsecret_proof"),
            event_count=len(self.data) if self.data is not None else 0,
            status=status,
            method=self.method,
            path=self.path,
            error_code=code if isinstance(code, int) else None,
            error_subcode=subcode if isinstance(subcode, int) else None,
        )


def version_tuple(version: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a ``v<major>.<minor>`` version, else ``None``."""
    match = _VERSION.fullmatch(version)
    return (int(match[1]), int(match[2])) if match else None


def parse_request(request: httpx.Request) -> Parsed:
    """Read the path, the parameters and ``data`` of a request, without judging the events."""
    path = request.url.path
    match = _PATH.fullmatch(path)
    params: dict[str, Any] = dict(request.url.params)
    params_error = _read_body(request, params)
    if "access_token" not in params:
        # Graph also takes the token as "Authorization: OAuth <token>" (or Bearer).
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() in ("oauth", "bearer") and credentials.strip():
            params["access_token"] = credentials.strip()
    data, data_error = _read_data(params)
    return Parsed(
        method=request.method.upper(),
        path=path,
        api_version=match["version"] if match else None,
        pixel_id=match["pixel"] if match else None,
        params=params,
        params_error=params_error,
        data=data,
        data_error=data_error,
    )


def _read_body(request: httpx.Request, params: dict[str, Any]) -> str | None:
    # Body values win over query values; returns why the body could not be read, if so.
    body = request.content
    if not body.strip():
        return None
    media = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    is_json = media == "application/json" or media.endswith("+json")
    if is_json or (not media and body.lstrip().startswith(b"{")):
        try:
            obj = json.loads(body)
        except ValueError:
            return "(#100) The request body is not valid JSON."
        if not isinstance(obj, dict):
            return "(#100) The JSON request body must be an object."
        params.update(obj)
        return None
    if media in ("", "application/x-www-form-urlencoded"):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return "(#100) The request body is not valid UTF-8."
        params.update(urllib.parse.parse_qsl(text, keep_blank_values=True))
        return None
    if media == "multipart/form-data":
        # What Meta's own curl examples send (curl -F data=... -F access_token=...).
        return _read_multipart(request.headers["Content-Type"], body, params)
    return (
        f"(#100) Unsupported Content-Type {media!r}: send application/json, "
        "application/x-www-form-urlencoded or multipart/form-data."
    )


def _read_multipart(content_type: str, body: bytes, params: dict[str, Any]) -> str | None:
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return "(#100) The multipart request body could not be read."
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        try:
            params[name] = payload.decode("utf-8")
        except UnicodeDecodeError:
            return "(#100) The request body is not valid UTF-8."
    return None


def _read_data(params: Mapping[str, Any]) -> tuple[list[Any] | None, str | None]:
    if "data" not in params:
        return None, "(#100) The parameter data is required"
    raw = params["data"]
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None, "(#100) param data must be an array."
    if not isinstance(raw, list):
        return None, "(#100) param data must be an array."
    # Graph also takes each event as a JSON string.
    data = [_json_or_as_is(item) for item in raw]
    if not raw:
        return data, "(#100) param data must be a non-empty array."
    if len(raw) > MAX_EVENTS_PER_REQUEST:
        return data, (
            f"(#100) param data must contain at most {MAX_EVENTS_PER_REQUEST} events, "
            f"got {len(raw)}."
        )
    return data, None


def _json_or_as_is(item: object) -> object:
    if isinstance(item, str):
        try:
            return json.loads(item)
        except ValueError:
            return item  # rejected later, as Graph would
    return item


# -- answers ----------------------------------------------------------------------------------


def graph_error(
    code: int,
    message: str,
    *,
    subcode: int | None = None,
    transient: bool = False,
    type: str = "OAuthException",
    user_title: str | None = None,
    user_msg: str | None = None,
) -> dict[str, object]:
    """A Graph error object, e.g. for :meth:`FakeGraphAPI.fail_next`.

    .. code-block:: python

        fake.fail_next(400, error=FakeGraphAPI.graph_error(
            190, "Error validating access token: Session has expired", subcode=463))
    """
    error: dict[str, object] = {"message": message, "type": type, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if user_title is not None:
        error["error_user_title"] = user_title
    if user_msg is not None:
        error["error_user_msg"] = user_msg
    error["is_transient"] = transient
    return error


def object_error(method: str, object_id: str) -> dict[str, object]:
    """Graph's answer for an object that does not exist or does not take this method."""
    message = (
        f"Unsupported {method.lower()} request. Object with ID '{object_id}' does not exist, "
        "cannot be loaded due to missing permissions, or does not support this operation. "
        "Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api"
    )
    return graph_error(100, message, subcode=SUBCODE_OBJECT_NOT_FOUND, type="GraphMethodException")


def object_segment(path: str) -> str:
    """The object id a path names, as Graph echoes it in :func:`object_error`."""
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 2:
        return parts[1]
    return parts[0] if parts else ""


def stock_fault(
    status: int, throttle_code: int, event_count: int
) -> tuple[dict[str, object] | None, bytes | None]:
    """The error object or raw body a fault with no scripted body answers with."""
    if status == 503:
        return None, _SERVICE_UNAVAILABLE
    if status == 429:
        message = _THROTTLE_MESSAGES.get(throttle_code, "(#17) User request limit reached")
        return graph_error(throttle_code, message, transient=True), None
    if status >= 500:
        error = graph_error(
            1, "An unknown error occurred", subcode=_SUBCODE_UNKNOWN_ERROR, transient=True
        )
        return error, None
    if status >= 400:
        return graph_error(100, "(#100) Invalid parameter"), None
    # A success-shaped answer whose events were never recorded: "Meta said OK, then lost it".
    payload = {"events_received": event_count, "messages": [], "fbtrace_id": trace_id()}
    return None, json.dumps(payload).encode()


def trace_id() -> str:
    return secrets.token_urlsafe(8)[:11]


def raw_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    """A raw body; Content-Type guessed from it unless ``headers`` give one."""
    merged = httpx.Headers(
        {"Content-Type": _sniff_content_type(body), "Content-Length": str(len(body))}
    )
    for name, value in (headers or {}).items():
        merged[name] = value
    return httpx.Response(status, content=body, headers=merged)


def _sniff_content_type(body: bytes) -> str:
    stripped = body.lstrip()
    if stripped.startswith(b"<"):
        return "text/html; charset=utf-8"
    if stripped.startswith((b"{", b"[")):
        return "application/json; charset=UTF-8"
    return "text/plain; charset=utf-8"


def graph_response(
    status: int, error: dict[str, object], headers: Mapping[str, str] | None = None
) -> httpx.Response:
    """``{"error": error}``, with an ``fbtrace_id`` filled in when the error has none."""
    trace = error.setdefault("fbtrace_id", trace_id())
    return json_response(status, {"error": error}, str(trace), headers)


def json_response(
    status: int,
    payload: Mapping[str, object],
    trace: str,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    merged = httpx.Headers(
        {"Content-Type": "application/json; charset=UTF-8", "x-fb-trace-id": trace}
    )
    for name, value in (headers or {}).items():
        merged[name] = value
    merged["Content-Length"] = str(len(body))
    return httpx.Response(status, content=body, headers=merged)

"""A validating fake of Meta's Conversions API endpoint, for tests.

:class:`FakeGraphAPI` answers ``POST {graph}/{version}/{pixel_id}/events`` the way Meta does:
it rejects a whole batch when one event is wrong, insists on hashed contact data, checks
tokens, ``appsecret_proof`` and the API version, and can be told to fail on purpose. Use it
in-process as an ``httpx`` transport, or as a real HTTP server on loopback for code that
runs in another thread or process.

Run ``python -m pixelmirror.testing --port 8765`` for a standalone server that prints each
accepted event as one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import hmac
import http.server
import ipaddress
import json
import logging
import math
import os
import random
import re
import secrets
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from pixelmirror.accounts import check_partner_agent
from pixelmirror.config import MAX_BATCH_SIZE as MAX_EVENTS_PER_REQUEST
from pixelmirror.events import (
    ACTION_SOURCES,
    MAX_EVENT_NAME_LENGTH,
    MAX_FUTURE_SKEW,
    max_age,
)
from pixelmirror.normalize import HASHED_KEYS, identifies_user

__all__ = [
    "ACTION_SOURCES",
    "HASHED_USER_DATA_KEYS",
    "SUBCODE_INSUFFICIENT_USER_DATA",
    "SUBCODE_INVALID_HASHED_DATA",
    "SUBCODE_OBJECT_NOT_FOUND",
    "SUBCODE_PURCHASE_VALUE_CURRENCY",
    "SUBCODE_TIMESTAMP_IN_FUTURE",
    "SUBCODE_TIMESTAMP_TOO_OLD",
    "FakeGraphAPI",
    "ReceivedEvent",
    "RecordedRequest",
]

#: ``user_data`` keys that must arrive as SHA-256 hex (or lists of it).
HASHED_USER_DATA_KEYS = HASHED_KEYS

SUBCODE_OBJECT_NOT_FOUND = 33
SUBCODE_TIMESTAMP_TOO_OLD = 2804003
SUBCODE_TIMESTAMP_IN_FUTURE = 2804004
#: Meta's subcode for this case is not documented; this one is the fake's choice.
SUBCODE_PURCHASE_VALUE_CURRENCY = 2804008
SUBCODE_INVALID_HASHED_DATA = 2804019
SUBCODE_INSUFFICIENT_USER_DATA = 2804050
_SUBCODE_SESSION_INVALIDATED = 460
_SUBCODE_UNKNOWN_ERROR = 99

_PATH = re.compile(r"/(?:(?P<version>[^/]+)/)?(?P<pixel>[0-9]+)/events/?")
_VERSION = re.compile(r"v([0-9]+)\.([0-9]+)")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_PLAIN_STRING_KEYS = ("client_user_agent", "fbc", "fbp")

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


@dataclass(frozen=True)
class RecordedRequest:
    """One request :class:`FakeGraphAPI` saw, whatever it answered.

    Fields the request did not carry (or carried with the wrong type) are ``None``;
    ``pixel_id`` is ``None`` when the path was not ``/<version>/<pixel_id>/events``.
    """

    pixel_id: str | None
    api_version: str | None
    access_token: str | None
    test_event_code: str | None
    partner_agent: str | None
    appsecret_proof: str | None
    #: Length of ``data`` when it parsed as a list, else 0.
    event_count: int
    #: HTTP status answered; ``None`` for a simulated timeout (no answer at all).
    status: int | None
    method: str
    path: str
    #: Graph ``error.code`` / ``error.error_subcode`` of a JSON error answer.
    error_code: int | None = None
    error_subcode: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the request was answered 200 and its events accepted."""
        return self.status == 200


@dataclass(frozen=True)
class ReceivedEvent:
    """One event :class:`FakeGraphAPI` accepted; ``data`` is the event object as received."""

    pixel_id: str
    access_token: str
    test_event_code: str | None
    partner_agent: str | None
    data: dict[str, Any]

    @property
    def event_name(self) -> str:
        return str(self.data["event_name"])

    @property
    def event_id(self) -> str | None:
        value = self.data.get("event_id")
        return value if isinstance(value, str) else None

    @property
    def event_time(self) -> int:
        return int(self.data["event_time"])

    @property
    def action_source(self) -> str:
        return str(self.data["action_source"])

    @property
    def user_data(self) -> dict[str, Any]:
        value: dict[str, Any] = self.data["user_data"]
        return value

    @property
    def custom_data(self) -> dict[str, Any]:
        """``custom_data``, or an empty dict when the event had none."""
        value: dict[str, Any] = self.data.get("custom_data", {})
        return value


@dataclass(frozen=True)
class _Fault:
    status: int
    error: Mapping[str, object] | None = None
    body: bytes | None = None
    headers: Mapping[str, str] | None = None
    timeout: bool = False
    throttle_code: int = 80004


@dataclass
class _Parsed:
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


class _Reject(Exception):
    def __init__(self, status: int, error: dict[str, object]) -> None:
        super().__init__(error.get("message"))
        self.status = status
        self.error = error


class FakeGraphAPI:
    """A validating stand-in for Meta's ``POST /{version}/{pixel_id}/events`` endpoint.

    Point a client at it in-process through :attr:`transport`, or over real HTTP on
    loopback through :meth:`serve`; both run the same :meth:`handle`. It is thread-safe:
    sender threads and other processes may hit it concurrently.

    .. code-block:: python

        import httpx
        from pixelmirror.testing import FakeGraphAPI

        def test_purchase_is_mirrored():
            fake = FakeGraphAPI(access_tokens=["EAAB-test"])
            client = httpx.Client(transport=fake.transport)
            send_my_events(client, token="EAAB-test")      # the code under test

            assert [e.event_name for e in fake.events] == ["Purchase"]
            assert fake.events[0].custom_data["currency"] == "EUR"

        def test_retries_a_throttled_batch():
            fake = FakeGraphAPI()
            throttled = FakeGraphAPI.graph_error(17, "(#17) User request limit reached",
                                                 transient=True)
            fake.fail_next(429, error=throttled, headers={"Retry-After": "1"})
            with fake.serve() as base_url:                 # "http://127.0.0.1:<port>"
                start_background_sender(graph_url=base_url)
                assert fake.wait_for(1, timeout=5)
            assert [r.status for r in fake.requests] == [429, 200]

    A request is validated as Meta does it, and one bad event rejects the whole batch with
    HTTP 400 and a Graph error ``{"error": {"message", "type", "code", "error_subcode",
    "error_user_title", "error_user_msg", "is_transient", "fbtrace_id"}}``. For event errors
    ``error_user_msg`` starts with ``event index <i>:``. ``error_subcode`` and the
    ``error_user_*`` keys are left out where Graph has none (plain parameter errors).

    =============================================  ======  =====  =========
    problem                                        status  code   subcode
    =============================================  ======  =====  =========
    path not ``/<version>/<digits>/events``        404     100    33
    method other than POST                         400     100    33
    version missing, malformed or below minimum    400     2635
    body unparsable, or wrong Content-Type         400     100
    ``access_token`` missing or empty              401     190
    token unknown                                  400     190
    token revoked                                  400     190    460
    ``appsecret_proof`` missing or wrong           400     100
    pixel unknown, or token not valid for it       400     100    33
    ``partner_agent``, ``test_event_code``         400     100
    ``data`` missing, not a list, empty, > 1000    400     100
    an event's fields malformed (see below)        400     100
    ``event_time`` too old                         400     100    2804003
    ``event_time`` > 10 minutes in the future      400     100    2804004
    ``Purchase`` lacks ``value`` or ``currency``   400     100    2804008
    hashed ``user_data`` key not SHA-256 hex       400     100    2804019
    ``user_data`` does not identify the user       400     100    2804050
    =============================================  ======  =====  =========

    "Malformed" covers: an event that is not an object, ``event_name`` (non-empty, at most
    50 characters), ``event_time`` not an int, ``action_source`` not a known one, a
    ``website`` event without ``event_source_url`` or ``user_data.client_user_agent``,
    ``user_data`` missing or not an object, ``client_ip_address`` not an IP, ``fbc``/``fbp``/
    ``client_user_agent`` not non-empty strings, ``custom_data`` not an object, ``event_id``
    not a non-empty string. "Too old" is 7 days, 62 for ``physical_store`` events. The
    subcode constants are exported (``SUBCODE_TIMESTAMP_TOO_OLD`` ...); 2804008 is the
    fake's own pick, Meta documents none for that case.

    The fake is stricter than Meta in places, on purpose: ``event_time`` must be an int,
    ``event_source_url`` must start with ``http://`` or ``https://``, and every hashed key
    (``em ph fn ln db ge ct st zp country external_id``) must be 64 lowercase hex characters
    (or a non-empty list of them), so a client that leaks raw PII fails loudly. Real Graph
    answers a missing token with code 104; the fake uses 190 so that every token problem
    looks alike to the client.

    Parameters may come as a JSON object body, as a form-encoded body (``data`` being a JSON
    array string) or in the query string; body values win over query values. The token may
    also come as an ``Authorization: OAuth <token>`` (or ``Bearer``) header.

    :param access_tokens: ``None`` accepts any non-empty token. A collection lists the
        tokens valid for every pixel. A mapping ``pixel_id -> tokens`` makes those pixels
        the only ones that exist, each with its own tokens. Change later with
        :meth:`revoke` and :meth:`grant`.
    :param app_secret: when set, ``appsecret_proof`` (hex HMAC-SHA256 of the token keyed
        by the secret) is required and checked.
    :param min_api_version: the oldest accepted ``v<major>.<minor>`` path version.
    :param failure_rate: probability that a request is answered, before any validation,
        with a random fault drawn from ``failure_statuses``: 500 (Graph JSON, code 1,
        transient), 503 (an HTML "Service Unavailable" page, not JSON), 429 (Graph JSON
        throttle, code 80004 or 17, transient), any other status a generic Graph error.
        Random faults carry no ``Retry-After``.
    :param failure_statuses: statuses random faults are drawn from.
    :param seed: seed for the random faults, for reproducible runs.
    :param latency: seconds slept before answering each request (also in-process, where
        it blocks the caller; with an async client prefer :meth:`serve`).
    :param clock: returns the current Unix time, used for the ``event_time`` window.
    :param on_event: called with each accepted :class:`ReceivedEvent`, from the thread
        that made the request (e.g. to print what Meta would receive).
    """

    def __init__(
        self,
        *,
        access_tokens: Collection[str] | Mapping[str, Collection[str]] | None = None,
        app_secret: str | None = None,
        min_api_version: str = "v20.0",
        failure_rate: float = 0.0,
        failure_statuses: Sequence[int] = (500, 503, 429),
        seed: int | None = None,
        latency: float = 0.0,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[ReceivedEvent], object] | None = None,
    ) -> None:
        min_version = _version_tuple(min_api_version)
        if min_version is None:
            raise ValueError(f"min_api_version must look like 'v20.0', got {min_api_version!r}")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be within [0, 1], got {failure_rate!r}")
        if failure_rate > 0 and not failure_statuses:
            raise ValueError("failure_statuses must not be empty when failure_rate > 0")
        if latency < 0:
            raise ValueError(f"latency must not be negative, got {latency!r}")

        self._min_api_version = min_api_version
        self._min_version = min_version
        self._app_secret = app_secret
        self._failure_rate = failure_rate
        self._failure_statuses = tuple(failure_statuses)
        self._rng = random.Random(seed)
        self._latency = latency
        self._clock = clock
        self._on_event = on_event

        # Token model: a token is valid for a pixel when it is not revoked and is either in
        # _all_tokens (None = any token) or in that pixel's set; None pixels = any pixel exists.
        self._all_tokens: set[str] | None
        self._pixel_tokens: dict[str, set[str]] = {}
        self._known_pixels: set[str] | None = None
        self._revoked: set[str] = set()
        if access_tokens is None:
            self._all_tokens = None
        elif isinstance(access_tokens, Mapping):
            self._all_tokens = set()
            self._pixel_tokens = {str(p): _token_set(t) for p, t in access_tokens.items()}
            self._known_pixels = set(self._pixel_tokens)
        else:
            self._all_tokens = _token_set(access_tokens)

        self._cond = threading.Condition(threading.Lock())
        self._faults: deque[_Fault] = deque()
        self._requests: list[RecordedRequest] = []
        self._events: list[ReceivedEvent] = []
        self._transport = httpx.MockTransport(self.handle)

    # -- recordings ------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request seen so far, in the order they were answered (a snapshot)."""
        with self._cond:
            return list(self._requests)

    @property
    def events(self) -> list[ReceivedEvent]:
        """Every accepted event, in order (a deep copy: mutating it changes nothing)."""
        with self._cond:
            return [replace(e, data=copy.deepcopy(e.data)) for e in self._events]

    def event_ids(self) -> list[str]:
        """``event_id`` of every accepted event, in order, duplicates kept.

        Events sent without an ``event_id`` are skipped.
        """
        with self._cond:
            return [e.event_id for e in self._events if e.event_id is not None]

    def reset(self) -> None:
        """Forget recorded requests and events and drop queued :meth:`fail_next` faults.

        Tokens and settings are kept.
        """
        with self._cond:
            self._requests.clear()
            self._events.clear()
            self._faults.clear()

    def wait_for(self, count: int, timeout: float | None) -> bool:
        """Block until at least ``count`` events were accepted, or ``timeout`` seconds pass.

        :param timeout: seconds to wait at most; ``None`` waits forever.
        :return: whether ``count`` events are there.
        """
        with self._cond:
            return self._cond.wait_for(lambda: len(self._events) >= count, timeout)

    # -- tokens ----------------------------------------------------------------------------

    def revoke(self, token: str) -> None:
        """Make ``token`` invalid everywhere (Graph then answers code 190, subcode 460)."""
        with self._cond:
            self._revoked.add(token)
            if self._all_tokens is not None:
                self._all_tokens.discard(token)
            for tokens in self._pixel_tokens.values():
                tokens.discard(token)

    def grant(self, token: str, pixel_id: str | None = None) -> None:
        """Make ``token`` valid for ``pixel_id``, or for every pixel when it is ``None``.

        Granting for a pixel the ``access_tokens`` mapping did not list makes that pixel
        exist. With ``access_tokens=None`` this only undoes :meth:`revoke`.
        """
        with self._cond:
            self._revoked.discard(token)
            if pixel_id is None:
                if self._all_tokens is not None:
                    self._all_tokens.add(token)
                return
            self._pixel_tokens.setdefault(pixel_id, set()).add(token)
            if self._known_pixels is not None:
                self._known_pixels.add(pixel_id)

    # -- fault injection -------------------------------------------------------------------

    def fail_next(
        self,
        status: int = 500,
        *,
        times: int = 1,
        error: Mapping[str, object] | None = None,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: bool = False,
    ) -> None:
        """Answer the next ``times`` requests with a scripted fault, before any validation.

        Faults queue up first in, first out, and win over random faults. Nothing the faulted
        requests carry is accepted.

        :param status: HTTP status to answer.
        :param error: a Graph error object, sent as ``{"error": error}``; ``fbtrace_id`` is
            filled in when absent. See :meth:`graph_error`.
        :param body: a raw body instead (for example an HTML page); its Content-Type is
            ``text/html`` when it starts with ``<``, else ``text/plain``, unless ``headers``
            say otherwise. Without ``error`` and ``body`` a stock body for ``status`` is
            sent, like the random faults'; a status below 400 gets a success-shaped body.
        :param headers: extra response headers, e.g. ``{"Retry-After": "2"}``.
        :param timeout: simulate a timeout instead of answering: in-process
            :class:`httpx.ReadTimeout` is raised; over :meth:`serve` the connection is
            closed without an answer, so the client sees a transport error such as
            :class:`httpx.RemoteProtocolError`.
        """
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times!r}")
        if error is not None and body is not None:
            raise ValueError("pass error or body, not both")
        if not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {status!r}")
        raw = body.encode("utf-8") if isinstance(body, str) else body
        fault = _Fault(
            status=status,
            error=dict(error) if error is not None else None,
            body=raw,
            headers=dict(headers) if headers else None,
            timeout=timeout,
        )
        with self._cond:
            self._faults.extend([fault] * times)

    @staticmethod
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
        """Build a Graph error object, e.g. for :meth:`fail_next`.

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

    # -- the endpoint ----------------------------------------------------------------------

    @property
    def transport(self) -> httpx.MockTransport:
        """An ``httpx`` transport answering through :meth:`handle`.

        ``httpx.Client(transport=fake.transport)``; any host in the URL will do.
        """
        return self._transport

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request as the Graph API would. Both serving modes end up here."""
        if self._latency > 0:
            time.sleep(self._latency)
        parsed = _parse_request(request)
        with self._cond:
            fault = self._next_fault()
        if fault is not None:
            return self._answer_fault(request, parsed, fault)
        try:
            data = self._validate(parsed)
        except _Reject as exc:
            response = _graph_response(exc.status, exc.error)
            self._record(parsed, exc.status, exc.error)
            return response

        token = parsed.string("access_token")
        pixel_id = parsed.pixel_id
        # Both guaranteed by _validate.
        assert token is not None
        assert pixel_id is not None
        received = [
            ReceivedEvent(
                pixel_id=pixel_id,
                access_token=token,
                test_event_code=parsed.string("test_event_code"),
                partner_agent=parsed.string("partner_agent"),
                data=event,
            )
            for event in data
        ]
        trace = _trace_id()
        with self._cond:
            self._requests.append(_recorded(parsed, 200))
            self._events.extend(received)
            self._cond.notify_all()
        if self._on_event is not None:
            for event in received:
                self._on_event(event)
        payload = {"events_received": len(received), "messages": [], "fbtrace_id": trace}
        return _json_response(200, payload, trace)

    def _next_fault(self) -> _Fault | None:
        # Caller holds the lock (the RNG is shared state too).
        if self._faults:
            return self._faults.popleft()
        if self._failure_rate > 0 and self._rng.random() < self._failure_rate:
            status = self._rng.choice(self._failure_statuses)
            return _Fault(status=status, throttle_code=self._rng.choice((80004, 17)))
        return None

    def _answer_fault(
        self, request: httpx.Request, parsed: _Parsed, fault: _Fault
    ) -> httpx.Response:
        if fault.timeout:
            self._record(parsed, None)
            raise httpx.ReadTimeout("timed out (simulated by FakeGraphAPI)", request=request)
        error: Mapping[str, object] | None = fault.error
        body = fault.body
        if error is None and body is None:
            error, body = _stock_fault(fault.status, fault.throttle_code, parsed)
        if body is not None:
            headers = httpx.Headers(
                {"Content-Type": _sniff_content_type(body), "Content-Length": str(len(body))}
            )
            for name, value in (fault.headers or {}).items():
                headers[name] = value
            self._record(parsed, fault.status)
            return httpx.Response(fault.status, content=body, headers=headers)
        assert error is not None
        err = dict(error)
        response = _graph_response(fault.status, err, fault.headers)
        self._record(parsed, fault.status, err)
        return response

    def _record(
        self, parsed: _Parsed, status: int | None, error: Mapping[str, object] | None = None
    ) -> None:
        recorded = _recorded(parsed, status, error)
        with self._cond:
            self._requests.append(recorded)

    # -- validation ------------------------------------------------------------------------

    def _validate(self, p: _Parsed) -> list[dict[str, Any]]:
        if p.pixel_id is None:
            raise _Reject(404, _object_error(p.method, _object_segment(p.path)))
        if p.method != "POST":
            raise _Reject(400, _object_error(p.method, p.pixel_id))
        version = _version_tuple(p.api_version) if p.api_version is not None else None
        if version is None or version < self._min_version:
            message = (
                "(#2635) You are calling a deprecated version of the Ads API. "
                f"Please update to the latest version: {self._min_api_version}."
            )
            raise _Reject(400, self.graph_error(2635, message))
        if p.params_error is not None:
            raise _Reject(400, self.graph_error(100, p.params_error))
        self._check_auth(p)
        for name in ("test_event_code", "partner_agent"):
            if name in p.params and not isinstance(p.params[name], str):
                raise _Reject(400, self.graph_error(100, f"(#100) param {name} must be a string."))
        agent = p.string("partner_agent")
        if agent is not None and not _valid_agent(agent):
            message = (
                "(#100) param partner_agent must be shorter than 23 characters "
                "and contain at least two letters."
            )
            raise _Reject(400, self.graph_error(100, message))
        if p.data_error is not None:
            raise _Reject(400, self.graph_error(100, p.data_error))
        assert p.data is not None
        now = self._clock()
        for index, event in enumerate(p.data):
            _check_event(index, event, now)
        return p.data

    def _check_auth(self, p: _Parsed) -> None:
        token = p.params.get("access_token")
        if token is None or token == "":
            message = "An access token is required to request this resource."
            raise _Reject(401, self.graph_error(190, message))
        with self._cond:
            known = isinstance(token, str) and self._token_known(token)
            revoked = isinstance(token, str) and token in self._revoked
            allowed = isinstance(token, str) and self._token_allows(token, p.pixel_id or "")
        if revoked:
            message = (
                "Error validating access token: The session has been invalidated because the "
                "user changed their password or Facebook has changed the session for security "
                "reasons."
            )
            raise _Reject(400, self.graph_error(190, message, subcode=_SUBCODE_SESSION_INVALIDATED))
        if not known:
            message = "Invalid OAuth access token - Cannot parse access token"
            raise _Reject(400, self.graph_error(190, message))
        assert isinstance(token, str)
        if self._app_secret is not None:
            proof = p.params.get("appsecret_proof")
            if not isinstance(proof, str) or not proof:
                message = "API calls from the server require an appsecret_proof argument"
                raise _Reject(400, self.graph_error(100, message))
            expected = hmac.new(
                self._app_secret.encode(), token.encode(), hashlib.sha256
            ).hexdigest()
            if not hmac.compare_digest(expected.encode(), proof.encode()):
                message = "Invalid appsecret_proof provided in the API argument"
                raise _Reject(400, self.graph_error(100, message))
        if not allowed:
            raise _Reject(400, _object_error(p.method, p.pixel_id or ""))

    def _token_known(self, token: str) -> bool:
        # Caller holds the lock.
        if token in self._revoked:
            return False
        if self._all_tokens is None or token in self._all_tokens:
            return True
        return any(token in tokens for tokens in self._pixel_tokens.values())

    def _token_allows(self, token: str, pixel_id: str) -> bool:
        # Caller holds the lock.
        if token in self._revoked:
            return False
        if self._known_pixels is not None and pixel_id not in self._known_pixels:
            return False
        if self._all_tokens is None or token in self._all_tokens:
            return True
        return token in self._pixel_tokens.get(pixel_id, ())

    # -- serving ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the fake over HTTP/1.1 (keep-alive) in a background thread.

        Yields the base URL, e.g. ``http://127.0.0.1:54321``; the server stops, and open
        connections are closed, when the block exits. ``port=0`` picks a free port.

        .. code-block:: python

            with fake.serve() as base_url:
                httpx.post(f"{base_url}/v21.0/123/events", json={...})
        """
        server = _Server((host, port), self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="FakeGraphAPI-server",
            daemon=True,
        )
        thread.start()
        try:
            yield server.base_url
        finally:
            server.shutdown()
            server.close_connections()
            server.server_close()
            thread.join()


# -- request parsing and checks (pure) ----------------------------------------------------


def _parse_request(request: httpx.Request) -> _Parsed:
    path = request.url.path
    match = _PATH.fullmatch(path)
    params: dict[str, Any] = dict(request.url.params)
    params_error: str | None = None
    body = request.content
    media = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if body.strip():
        is_json = media == "application/json" or media.endswith("+json")
        if is_json or (not media and body.lstrip().startswith(b"{")):
            try:
                obj = json.loads(body)
            except ValueError:
                obj, params_error = None, "(#100) The request body is not valid JSON."
            if isinstance(obj, dict):
                params.update(obj)
            elif params_error is None:
                params_error = "(#100) The JSON request body must be an object."
        elif media in ("", "application/x-www-form-urlencoded"):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                params_error = "(#100) The request body is not valid UTF-8."
            else:
                params.update(urllib.parse.parse_qsl(text, keep_blank_values=True))
        else:
            params_error = (
                f"(#100) Unsupported Content-Type {media!r}: "
                "send application/json or application/x-www-form-urlencoded."
            )

    if "access_token" not in params:
        # Graph also takes the token as "Authorization: OAuth <token>" (or Bearer).
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() in ("oauth", "bearer") and credentials.strip():
            params["access_token"] = credentials.strip()

    data: list[Any] | None = None
    data_error: str | None = None
    raw = params.get("data")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
            data_error = "(#100) param data must be an array."
    if "data" not in params:
        data_error = "(#100) The parameter data is required"
    elif not isinstance(raw, list):
        data_error = "(#100) param data must be an array."
    else:
        # Graph also takes each event as a JSON string (what Meta's Python SDK sends).
        data = [_json_or_as_is(item) for item in raw]
        if not raw:
            data_error = "(#100) param data must be a non-empty array."
        elif len(raw) > MAX_EVENTS_PER_REQUEST:
            data_error = (
                f"(#100) param data must contain at most {MAX_EVENTS_PER_REQUEST} events, "
                f"got {len(raw)}."
            )
    return _Parsed(
        method=request.method.upper(),
        path=path,
        api_version=match["version"] if match else None,
        pixel_id=match["pixel"] if match else None,
        params=params,
        params_error=params_error,
        data=data,
        data_error=data_error,
    )


def _check_event(index: int, event: object, now: float) -> None:
    def reject(title: str, detail: str, subcode: int | None = None) -> _Reject:
        error = FakeGraphAPI.graph_error(
            100,
            "Invalid parameter",
            subcode=subcode,
            user_title=title,
            user_msg=f"event index {index}: {detail}",
        )
        return _Reject(400, error)

    if not isinstance(event, dict):
        raise reject("Invalid Event", "each element of data must be an object")

    name = event.get("event_name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_EVENT_NAME_LENGTH:
        raise reject(
            "Invalid Event Name",
            f"event_name must be a non-empty string of at most {MAX_EVENT_NAME_LENGTH} characters",
        )

    source = event.get("action_source")
    if source not in ACTION_SOURCES:
        raise reject(
            "Invalid Action Source",
            f"action_source must be one of {', '.join(sorted(ACTION_SOURCES))}",
        )

    event_time = event.get("event_time")
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        raise reject(
            "Invalid Event Time", "event_time must be an integer Unix timestamp in seconds"
        )
    oldest = max_age(source)
    if now - event_time > oldest:
        raise reject(
            "Event Timestamp Too Old",
            f"event_time {event_time} is more than {oldest // 86_400} days in the past",
            SUBCODE_TIMESTAMP_TOO_OLD,
        )
    if event_time - now > MAX_FUTURE_SKEW:
        raise reject(
            "Event Timestamp In The Future",
            f"event_time {event_time} is more than {MAX_FUTURE_SKEW // 60} minutes in the "
            "future (milliseconds instead of seconds?)",
            SUBCODE_TIMESTAMP_IN_FUTURE,
        )

    if source == "website":
        url = event.get("event_source_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise reject(
                "Missing Event Source URL",
                "website events need an http(s) event_source_url",
            )

    if "user_data" not in event:
        raise reject("Missing User Data", "user_data is required")
    user_data = event["user_data"]
    if not isinstance(user_data, dict):
        raise reject("Invalid User Data", "user_data must be an object")
    for key in sorted(HASHED_USER_DATA_KEYS.intersection(user_data)):
        if not _is_hashed(user_data[key]):
            # The value stays out of the message: it may be the very PII that leaked.
            raise reject(
                "Invalid hashed data",
                f"user_data.{key} must be a SHA-256 hash (64 lowercase hex characters) or a "
                "list of them; raw personal data must not be sent",
                SUBCODE_INVALID_HASHED_DATA,
            )
    if "client_ip_address" in user_data and not _is_ip(user_data["client_ip_address"]):
        raise reject(
            "Invalid IP Address", "user_data.client_ip_address must be an IPv4 or IPv6 address"
        )
    for key in _PLAIN_STRING_KEYS:
        if key in user_data and (not isinstance(user_data[key], str) or not user_data[key]):
            raise reject("Invalid User Data", f"user_data.{key} must be a non-empty string")
    if source == "website" and "client_user_agent" not in user_data:
        raise reject("Missing User Agent", "website events need user_data.client_user_agent")
    present = [key for key, value in user_data.items() if value not in (None, "", [])]
    if not identifies_user(present):
        raise reject(
            "Insufficient User Data",
            "The user data for this event is insufficient to match it to a person; "
            "send more customer information parameters",
            SUBCODE_INSUFFICIENT_USER_DATA,
        )

    custom_data = event.get("custom_data", {})
    if not isinstance(custom_data, dict):
        raise reject("Invalid Custom Data", "custom_data must be an object")
    if name == "Purchase":
        value = custom_data.get("value")
        currency = custom_data.get("currency")
        value_ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
        currency_ok = isinstance(currency, str) and bool(_CURRENCY.fullmatch(currency))
        if not (value_ok and currency_ok):
            raise reject(
                "Invalid Purchase Data",
                "Purchase events need custom_data.value (a number) and custom_data.currency "
                "(a 3-letter ISO 4217 code)",
                SUBCODE_PURCHASE_VALUE_CURRENCY,
            )

    if "event_id" in event:
        event_id = event["event_id"]
        if not isinstance(event_id, str) or not event_id:
            raise reject("Invalid Event ID", "event_id must be a non-empty string")


def _json_or_as_is(item: object) -> object:
    if isinstance(item, str):
        try:
            return json.loads(item)
        except ValueError:
            return item  # rejected later, as Graph would
    return item


def _valid_agent(agent: str) -> bool:
    try:
        check_partner_agent(agent)
    except ValueError:
        return False
    return True


def _is_hashed(value: object) -> bool:
    if isinstance(value, str):
        return _SHA256_HEX.fullmatch(value) is not None
    if isinstance(value, list) and value:
        return all(isinstance(v, str) and _SHA256_HEX.fullmatch(v) for v in value)
    return False


def _is_ip(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _version_tuple(version: str) -> tuple[int, int] | None:
    match = _VERSION.fullmatch(version)
    return (int(match[1]), int(match[2])) if match else None


def _token_set(tokens: Collection[str]) -> set[str]:
    # A lone string is a Collection[str] too; take it as one token, not its characters.
    return {tokens} if isinstance(tokens, str) else set(tokens)


def _object_segment(path: str) -> str:
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 2:
        return parts[1]
    return parts[0] if parts else ""


def _object_error(method: str, object_id: str) -> dict[str, object]:
    message = (
        f"Unsupported {method.lower()} request. Object with ID '{object_id}' does not exist, "
        "cannot be loaded due to missing permissions, or does not support this operation. "
        "Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api"
    )
    return FakeGraphAPI.graph_error(
        100, message, subcode=SUBCODE_OBJECT_NOT_FOUND, type="GraphMethodException"
    )


def _stock_fault(
    status: int, throttle_code: int, parsed: _Parsed
) -> tuple[dict[str, object] | None, bytes | None]:
    if status == 503:
        return None, _SERVICE_UNAVAILABLE
    if status == 429:
        message = _THROTTLE_MESSAGES.get(throttle_code, "(#17) User request limit reached")
        return FakeGraphAPI.graph_error(throttle_code, message, transient=True), None
    if status >= 500:
        error = FakeGraphAPI.graph_error(
            1, "An unknown error occurred", subcode=_SUBCODE_UNKNOWN_ERROR, transient=True
        )
        return error, None
    if status >= 400:
        return FakeGraphAPI.graph_error(100, "(#100) Invalid parameter"), None
    # A success-shaped answer whose events were never recorded: "Meta said OK, then lost it".
    count = len(parsed.data) if parsed.data is not None else 0
    payload = {"events_received": count, "messages": [], "fbtrace_id": _trace_id()}
    return None, json.dumps(payload).encode()


def _recorded(
    parsed: _Parsed, status: int | None, error: Mapping[str, object] | None = None
) -> RecordedRequest:
    code = error.get("code") if error is not None else None
    subcode = error.get("error_subcode") if error is not None else None
    return RecordedRequest(
        pixel_id=parsed.pixel_id,
        api_version=parsed.api_version,
        access_token=parsed.string("access_token"),
        test_event_code=parsed.string("test_event_code"),
        partner_agent=parsed.string("partner_agent"),
        appsecret_proof=parsed.string("appsecret_proof"),
        event_count=len(parsed.data) if parsed.data is not None else 0,
        status=status,
        method=parsed.method,
        path=parsed.path,
        error_code=code if isinstance(code, int) else None,
        error_subcode=subcode if isinstance(subcode, int) else None,
    )


def _trace_id() -> str:
    return secrets.token_urlsafe(8)[:11]


def _sniff_content_type(body: bytes) -> str:
    stripped = body.lstrip()
    if stripped.startswith(b"<"):
        return "text/html; charset=utf-8"
    if stripped.startswith((b"{", b"[")):
        return "application/json; charset=UTF-8"
    return "text/plain; charset=utf-8"


def _graph_response(
    status: int, error: dict[str, object], headers: Mapping[str, str] | None = None
) -> httpx.Response:
    trace = error.setdefault("fbtrace_id", _trace_id())
    return _json_response(status, {"error": error}, str(trace), headers)


def _json_response(
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


# -- the HTTP server ----------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], fake: FakeGraphAPI) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    @property
    def base_url(self) -> str:
        host = f"[{self.server_name}]" if ":" in self.server_name else self.server_name
        return f"http://{host}:{self.server_port}"

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        # Idle keep-alive connections would otherwise hold handler threads after shutdown.
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body would wait for the
    # client's delayed ACK (40 ms) and cap a one-request-at-a-time client at 25 requests/s.
    disable_nagle_algorithm = True
    server_version = "FakeGraphAPI"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no per-request noise on stderr

    def _dispatch(self) -> None:
        body = self._read_body()
        if not self.path.startswith("/"):
            self._send(400, b"bad request target\n", [("Content-Type", "text/plain")])
            return
        headers = [
            (name, value)
            for name, value in self.headers.items()
            if name.lower() not in ("content-length", "transfer-encoding")
        ]
        request = httpx.Request(
            self.command, self.server.base_url + self.path, headers=headers, content=body
        )
        try:
            response = self.server.fake.handle(request)
        except httpx.TimeoutException:
            self.close_connection = True  # hang up without answering, like a dead upstream
            return
        self._send(response.status_code, response.content, response.headers.multi_items())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def _send(self, status: int, body: bytes, headers: Sequence[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""


# -- python -m pixelmirror.testing ----------------------------------------------------------


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pixelmirror.testing",
        description="Serve a FakeGraphAPI; print each accepted event as a JSON line.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--token", action="append", dest="tokens", help="a valid token (repeat; default: any)"
    )
    parser.add_argument("--app-secret")
    parser.add_argument("--min-api-version", default="v20.0")
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    fake = FakeGraphAPI(
        access_tokens=args.tokens,
        app_secret=args.app_secret,
        min_api_version=args.min_api_version,
        failure_rate=args.failure_rate,
        seed=args.seed,
        on_event=print_event,
    )
    try:
        with fake.serve(args.host, args.port) as base_url:
            print(f"FakeGraphAPI listening on {base_url}", file=sys.stderr, flush=True)
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


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
        fake = FakeGraphAPI(on_event=_print_server_copy)
        url = _demo_servers.enter_context(fake.serve())
        settings.update(access_token="demo-token", graph_url=url, flush_interval=0.2)
        print(f"pixelmirror demo: CAPI goes to a FakeGraphAPI at {url}", flush=True)
        logging.basicConfig(format="%(message)s")
        logging.getLogger("pixelmirror").setLevel(logging.DEBUG)
    return settings


def _print_server_copy(event: ReceivedEvent) -> None:
    user = event.user_data
    print(
        f"pixelmirror demo: CAPI    <- {event.event_name} eventID={event.event_id} "
        f"external_id={str(user.get('external_id'))[:12]}... fbp={user.get('fbp')} "
        f"custom_data={json.dumps(event.custom_data)}",
        flush=True,
    )


def print_event(event: ReceivedEvent) -> None:
    """Print an accepted event as one JSON line: an ``on_event`` for demos."""
    line = {
        "pixel_id": event.pixel_id,
        "test_event_code": event.test_event_code,
        "partner_agent": event.partner_agent,
        "event": event.data,
    }
    print(json.dumps(line, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    sys.exit(_main())

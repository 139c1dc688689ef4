"""The fake itself: :class:`FakeGraphAPI`, a validating stand-in for Meta's ``/events``.

It judges events by the rules in :mod:`pixelmirror.testing.rules` (its own copy of Meta's),
reads and writes Graph's wire format through :mod:`pixelmirror.testing.wire`, records what
it saw, and injects faults on demand or at random.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx

from pixelmirror.testing import server
from pixelmirror.testing.records import ReceivedEvent, RecordedRequest
from pixelmirror.testing.tokens import TokenBook
from pixelmirror.testing.validate import Rejected, TokenStatus, check_request
from pixelmirror.testing.wire import (
    Parsed,
    graph_error,
    graph_response,
    json_response,
    parse_request,
    raw_response,
    stock_fault,
    trace_id,
    version_tuple,
)

__all__ = ["FakeGraphAPI"]


@dataclass(frozen=True)
class _Fault:
    status: int
    error: Mapping[str, object] | None = None
    body: bytes | None = None
    headers: Mapping[str, str] | None = None
    timeout: bool = False
    throttle_code: int = 80004


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
    ``user_data`` missing or not an object, ``client_ip_address`` not an IP, another key Meta
    wants unhashed (``client_user_agent fbc fbp subscription_id lead_id fb_login_id``) not a
    non-empty string (the three ids may be numbers), ``external_id`` not a non-empty string
    or list of them, ``custom_data`` not an object, ``event_id`` not a non-empty string. "Too
    old" is 7 days, 62 for ``physical_store`` events. The subcode constants are exported
    (``SUBCODE_TIMESTAMP_TOO_OLD`` ...); 2804008 is the fake's own pick, Meta documents none
    for that case. The rules live in :mod:`pixelmirror.testing.rules`.

    The keys Meta requires hashed (``em ph fn ln db ge ct st zp country``) must be 64
    lowercase hex characters (or a non-empty list of them), so a client that leaks raw PII
    fails loudly. ``external_id`` is taken hashed or not, as Meta takes it (it only
    recommends hashing). The fake is stricter than Meta in places, on purpose:
    ``event_time`` must be an int and ``event_source_url`` must start with ``http://`` or
    ``https://``. Real Graph answers a missing token with code 104; the fake uses 190 so that
    every token problem looks alike to the client.

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
        if version_tuple(min_api_version) is None:
            raise ValueError(f"min_api_version must look like 'v20.0', got {min_api_version!r}")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be within [0, 1], got {failure_rate!r}")
        if failure_rate > 0 and not failure_statuses:
            raise ValueError("failure_statuses must not be empty when failure_rate > 0")
        if latency < 0:
            raise ValueError(f"latency must not be negative, got {latency!r}")

        self._min_api_version = min_api_version
        self._app_secret = app_secret
        self._failure_rate = failure_rate
        self._failure_statuses = tuple(failure_statuses)
        self._rng = random.Random(seed)
        self._latency = latency
        self._clock = clock
        self._on_event = on_event
        self._tokens = TokenBook(access_tokens)
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
            self._tokens.revoke(token)

    def grant(self, token: str, pixel_id: str | None = None) -> None:
        """Make ``token`` valid for ``pixel_id``, or for every pixel when it is ``None``.

        Granting for a pixel the ``access_tokens`` mapping did not list makes that pixel
        exist. With ``access_tokens=None`` this only undoes :meth:`revoke`.
        """
        with self._cond:
            self._tokens.grant(token, pixel_id)

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

    #: Build a Graph error object, e.g. for :meth:`fail_next`.
    graph_error = staticmethod(graph_error)

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
        parsed = parse_request(request)
        with self._cond:
            fault = self._next_fault()
        if fault is not None:
            return self._answer_fault(request, parsed, fault)
        try:
            data = self._validate(parsed)
        except Rejected as exc:
            response = graph_response(exc.status, exc.error)
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
        trace = trace_id()
        with self._cond:
            self._requests.append(parsed.recorded(200))
            self._events.extend(received)
            self._cond.notify_all()
        if self._on_event is not None:
            for event in received:
                self._on_event(event)
        payload = {"events_received": len(received), "messages": [], "fbtrace_id": trace}
        return json_response(200, payload, trace)

    def _next_fault(self) -> _Fault | None:
        # Caller holds the lock (the RNG is shared state too).
        if self._faults:
            return self._faults.popleft()
        if self._failure_rate > 0 and self._rng.random() < self._failure_rate:
            status = self._rng.choice(self._failure_statuses)
            return _Fault(status=status, throttle_code=self._rng.choice((80004, 17)))
        return None

    def _answer_fault(
        self, request: httpx.Request, parsed: Parsed, fault: _Fault
    ) -> httpx.Response:
        if fault.timeout:
            self._record(parsed, None)
            raise httpx.ReadTimeout("timed out (simulated by FakeGraphAPI)", request=request)
        error: Mapping[str, object] | None = fault.error
        body = fault.body
        if error is None and body is None:
            count = len(parsed.data) if parsed.data is not None else 0
            error, body = stock_fault(fault.status, fault.throttle_code, count)
        if body is not None:
            self._record(parsed, fault.status)
            return raw_response(fault.status, body, fault.headers)
        assert error is not None
        err = dict(error)
        response = graph_response(fault.status, err, fault.headers)
        self._record(parsed, fault.status, err)
        return response

    def _record(
        self, parsed: Parsed, status: int | None, error: Mapping[str, object] | None = None
    ) -> None:
        recorded = parsed.recorded(status, error)
        with self._cond:
            self._requests.append(recorded)

    def _validate(self, parsed: Parsed) -> list[dict[str, Any]]:
        return check_request(
            parsed,
            min_api_version=self._min_api_version,
            app_secret=self._app_secret,
            token_status=self._token_status,
            clock=self._clock,
        )

    def _token_status(self, token: str, pixel_id: str) -> TokenStatus:
        with self._cond:
            return TokenStatus(
                known=self._tokens.known(token),
                revoked=self._tokens.revoked(token),
                allowed=self._tokens.allows(token, pixel_id),
            )

    # -- serving ---------------------------------------------------------------------------

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the fake over HTTP/1.1 (keep-alive) in a background thread.

        Yields the base URL, e.g. ``http://127.0.0.1:54321``; the server stops, and open
        connections are closed, when the block exits. ``port=0`` picks a free port.

        .. code-block:: python

            with fake.serve() as base_url:
                httpx.post(f"{base_url}/v21.0/123/events", json={...})
        """
        with server.serve(self.handle, host, port) as base_url:
            yield base_url

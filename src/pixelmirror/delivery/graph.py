"""The Graph API client: one POST per batch, every answer sorted into what to do next.

Meta answers a Conversions API request in five ways that matter to a sender, each sorted
into :mod:`pixelmirror.delivery.errors`' classes (re-exported here), so the dispatcher's
decisions read plainly:

* accepted: :class:`GraphResponse`;
* try again later: :class:`TransientError` (network, 5xx, 429, throttling codes), with the
  delay Meta asked for when it said one;
* fix the token: :class:`AccessError` (expired or revoked token, missing permission), where
  sending more only burns the queue;
* fix the configuration: :class:`RequestError`, an :class:`AccessError` about the request
  itself (app secret, unknown pixel, retired API version): every event would fail alike;
* the batch is invalid: :class:`InvalidEventsError`, only when Meta ties the rejection to an
  event (an event subcode, or an event index in its message).

The access token travels in the request body, never in the URL, so it cannot reach an access
log, and it is scrubbed from any text Meta echoes back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from pixelmirror import meta
from pixelmirror.config import Config
from pixelmirror.delivery.errors import AccessError as AccessError
from pixelmirror.delivery.errors import DeliveryError as DeliveryError
from pixelmirror.delivery.errors import InvalidEventsError as InvalidEventsError
from pixelmirror.delivery.errors import RequestError as RequestError
from pixelmirror.delivery.errors import TransientError as TransientError
from pixelmirror.delivery.sink import Delivered
from pixelmirror.events import BatchKey

logger = logging.getLogger("pixelmirror.delivery")

# Echoed text is cut to this many characters in error messages.
_ECHO_LIMIT = 120
# A run of this many leading characters of the token is hidden too: a cut echo of it.
_TOKEN_PREFIX = 8


#: Meta's name for a refused request: every sink raises the same classes.
GraphError = DeliveryError


@dataclass(frozen=True, slots=True)
class GraphResponse:
    events_received: int
    fbtrace_id: str | None = None
    messages: list[str] = field(default_factory=list)


class GraphClient:
    """Sends batches of pre-serialised events to ``/{version}/{pixel_id}/events``.

    One long-lived :class:`httpx.Client` serves every request (connection reuse matters at a
    thousand events per request). Pass ``transport`` to test against
    :class:`pixelmirror.testing.FakeGraphAPI` without a network.
    """

    def __init__(
        self,
        access_token: str | TokenSource,
        *,
        graph_url: str = "https://graph.facebook.com",
        api_version: str = "v26.0",
        app_secret: str | None = None,
        partner_agent: str | None = None,
        timeout: float = 10.0,
        token_ttl: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.tokens = Tokens(access_token, ttl=token_ttl)
        self._base = f"{graph_url.rstrip('/')}/{api_version}"
        self._app_secret = app_secret
        self._partner_agent = partner_agent
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Content-Type": "application/json"},
        )

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        tokens: TokenSource | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> GraphClient:
        """A client for ``config``; ``tokens`` (pixel id -> token) wins over the one token."""
        source = tokens or config.access_token
        if source is None:
            raise ValueError("a GraphClient needs PIXELMIRROR_ACCESS_TOKEN or a token resolver")
        return cls(
            source,
            graph_url=config.graph_url,
            api_version=config.api_version,
            app_secret=config.app_secret,
            partner_agent=config.partner_agent,
            timeout=config.request_timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"<GraphClient {self._base}>"

    def deliver(self, key: BatchKey, payloads: Sequence[bytes]) -> Delivered:
        """The :class:`~pixelmirror.delivery.sink.Sink` side of :meth:`send`."""
        answer = self.send(key.pixel_id, payloads, test_event_code=key.test_event_code)
        return Delivered(answer.events_received, answer.fbtrace_id, tuple(answer.messages))

    def fresh_credential(self, pixel_id: str) -> str | None:
        token = self.tokens.fresh(pixel_id)
        return None if token is None else token_fingerprint(token)

    def send(
        self, pixel_id: str, payloads: Sequence[bytes], *, test_event_code: str | None = None
    ) -> GraphResponse:
        """POST one batch; raises a :class:`GraphError` subclass unless Meta accepted it."""
        token = self.tokens.get(pixel_id)
        params = {"access_token": token}
        if self._app_secret:
            params["appsecret_proof"] = hmac.new(
                self._app_secret.encode(), token.encode(), hashlib.sha256
            ).hexdigest()
        body = request_body(
            payloads, params, partner_agent=self._partner_agent, test_event_code=test_event_code
        )
        try:
            response = self._http.post(f"{self._base}/{pixel_id}/events", content=body)
        except httpx.TransportError as exc:
            raise TransientError(_scrub(f"{type(exc).__name__}: {exc}", token)) from None
        try:
            return self._classify(response, token)
        except AccessError as exc:
            self.tokens.forget(pixel_id)  # the next try asks the resolver again
            exc.token_fingerprint = token_fingerprint(token)
            raise

    def close(self) -> None:
        self._http.close()

    def _classify(self, response: httpx.Response, token: str) -> GraphResponse:
        try:
            answer: Any = response.json()
        except ValueError:
            answer = None
        if response.status_code == 200 and isinstance(answer, dict) and "events_received" in answer:
            return GraphResponse(
                events_received=int(answer["events_received"]),
                fbtrace_id=answer.get("fbtrace_id"),
                messages=[str(m) for m in answer.get("messages") or []],
            )
        raise self._error(response, answer, token)

    def _error(self, response: httpx.Response, answer: Any, token: str) -> GraphError:
        status = response.status_code
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, Mapping):
            # No verdict from Meta itself (a proxy, a load balancer, an outage page): retrying
            # is safe, while treating it as a rejection would dead-letter good events.
            # Scrubbed before it is cut, so a cut cannot leave part of the token behind.
            snippet = _scrub(" ".join(response.text.split()), token)[:_ECHO_LIMIT]
            message = f"Graph answered HTTP {status}: {snippet!r}"
            if status in (401, 403):
                return AccessError(message, status=status)
            return TransientError(message, status=status, retry_after=_retry_after(response))
        user_message = error.get("error_user_msg")
        trace_id = error.get("fbtrace_id")
        refused = classify(status, error)(
            _scrub(str(error.get("message") or "Graph API error"), token),
            status=status,
            code=meta.error_number(error.get("code")),
            subcode=meta.error_number(error.get("error_subcode")),
            user_message=_scrub(str(user_message), token) if user_message else None,
            fbtrace_id=None if trace_id is None else str(trace_id),
        )
        if isinstance(refused, TransientError):
            refused.retry_after = _retry_after(response)
        return refused


def request_body(
    payloads: Sequence[bytes],
    credentials: Mapping[str, str] | None = None,
    *,
    partner_agent: str | None = None,
    test_event_code: str | None = None,
) -> bytes:
    """The JSON body of one ``/events`` request: the events, then the other parameters."""
    params = dict(credentials or {})
    if partner_agent:
        params["partner_agent"] = partner_agent
    if test_event_code:
        params["test_event_code"] = test_event_code
    # The events were serialised when they were created: join their bytes, don't re-encode.
    data = b'{"data":[' + b",".join(payloads) + b"]"
    return data + (b"," + json.dumps(params)[1:].encode() if params else b"}")


def classify(status: int, error: Mapping[str, Any]) -> type[GraphError]:
    """The exception for Meta's Graph ``error`` object answered with HTTP ``status``: the
    class of what it asks a sender to do (:func:`pixelmirror.meta.fault`)."""
    return _RAISES[meta.fault(status, error)]


_RAISES: dict[meta.Fault, type[GraphError]] = {
    meta.Fault.RETRY: TransientError,
    meta.Fault.ACCESS: AccessError,
    meta.Fault.REQUEST: RequestError,
    meta.Fault.EVENTS: InvalidEventsError,
}


def fault_of(error: GraphError) -> meta.Fault:
    """The fault an error stands for: the inverse of :func:`classify`."""
    if isinstance(error, TransientError):
        return meta.Fault.RETRY
    if isinstance(error, RequestError):  # before AccessError, its base
        return meta.Fault.REQUEST
    if isinstance(error, AccessError):
        return meta.Fault.ACCESS
    return meta.Fault.EVENTS


TokenSource = Callable[[str], "str | None"]


class Tokens:
    """Access tokens by pixel: one token for all, or a resolver asked at send time.

    A platform's resolver (``pixel id -> token``) is cached for ``ttl`` seconds, so a customer
    who rotates a token is served by the new one without a restart, and a pixel whose token
    Meta refused is asked for again on its next try.
    """

    def __init__(self, source: str | TokenSource, *, ttl: float = 60.0) -> None:
        self._source = source
        self._ttl = ttl
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, pixel_id: str) -> str:
        if isinstance(self._source, str):
            return self._source
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(pixel_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            token = self._source(pixel_id)
        except Exception as exc:
            raise AccessError(f"the token resolver failed for pixel {pixel_id}: {exc!r}") from None
        if not token:
            raise AccessError(f"the token resolver has no access token for pixel {pixel_id}")
        with self._lock:
            self._cache[pixel_id] = (token, now + self._ttl)
        return token

    def fresh(self, pixel_id: str) -> str | None:
        """Ask the resolver again, past the cache; None when it has no token to give."""
        self.forget(pixel_id)
        try:
            return self.get(pixel_id)
        except AccessError:
            return None

    def forget(self, pixel_id: str) -> None:
        with self._lock:
            self._cache.pop(pixel_id, None)


def token_fingerprint(token: str) -> str:
    """A short hash that tells tokens apart in logs and pauses without revealing them."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _scrub(text: str, token: str) -> str:
    """``text`` without the token, nor any cut echo of it (its first 8 characters or more)."""
    if not token:
        return text
    head = token[:_TOKEN_PREFIX]
    kept: list[str] = []
    start = 0
    while (found := text.find(head, start)) >= 0:
        end = found + len(head)
        while end < len(text) and end - found < len(token) and text[end] == token[end - found]:
            end += 1
        kept += (text[start:found], "[access token]")
        start = end
    kept.append(text[start:])
    return "".join(kept)


def _retry_after(response: httpx.Response) -> float | None:
    """The wait Meta asked for: ``Retry-After`` or the business-use-case regain estimate."""
    waits: list[float] = []
    header = response.headers.get("retry-after")
    if header:
        try:
            waits.append(float(header))
        except ValueError:
            try:
                moment = parsedate_to_datetime(header)
                date = parsedate_to_datetime(response.headers.get("date", header))
                waits.append((moment - date).total_seconds())
            except (TypeError, ValueError):
                pass
    usage = response.headers.get("x-business-use-case-usage")
    if usage:
        try:
            entries = json.loads(usage).values()
            waits.extend(
                60.0 * float(item.get("estimated_time_to_regain_access", 0))
                for group in entries
                for item in group
            )
        except (ValueError, AttributeError, TypeError):
            pass
    positive = [w for w in waits if w > 0]
    return max(positive) if positive else None

"""The Graph API client: one POST per batch, every answer sorted into what to do next.

Meta answers a Conversions API request in four ways that matter to a sender, and each gets
its own exception so the dispatcher's decisions read plainly:

* accepted: :class:`GraphResponse`;
* try again later: :class:`TransientError` (network, 5xx, 429, throttling codes), with the
  delay Meta asked for when it said one;
* fix the credentials: :class:`AccessError` (expired or revoked token, missing permission,
  unknown pixel, retired API version), where sending more only burns the queue;
* the batch is invalid: :class:`InvalidEventsError`, where Meta rejected the whole request
  because of one or more events in it.

The access token travels in the request body, never in the URL, so it cannot reach an access
log, and it is scrubbed from any text Meta echoes back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from pixelmirror.config import Config

logger = logging.getLogger("pixelmirror")

# Meta's error codes, grouped by what a sender should do (meta-capi.md section 8).
_THROTTLE_CODES = frozenset({1, 2, 4, 17, 32, 341, 613, *range(80000, 80015)})
_ACCESS_CODES = frozenset({10, 102, 190, *range(200, 300)})
_DEPRECATED_VERSION = 2635
_INVALID_PARAMETER = 100
_UNKNOWN_OBJECT_SUBCODE = 33  # "Object with ID ... does not exist": wrong pixel or no access


class GraphError(Exception):
    """Meta did not accept a request; carries Meta's own fields when it sent them."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        user_message: str | None = None,
        fbtrace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.subcode = subcode
        self.user_message = user_message
        self.fbtrace_id = fbtrace_id

    def __str__(self) -> str:
        parts = [self.message]
        if self.user_message and self.user_message not in self.message:
            parts.append(self.user_message)
        facts = [
            f"{label} {value}"
            for label, value in (
                ("HTTP", self.status),
                ("code", self.code),
                ("subcode", self.subcode),
                ("fbtrace_id", self.fbtrace_id),
            )
            if value is not None
        ]
        return ": ".join(parts) + (f" ({', '.join(facts)})" if facts else "")


class TransientError(GraphError):
    """Worth retrying. ``retry_after`` is the wait in seconds Meta asked for, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **facts: Any) -> None:
        super().__init__(message, **facts)
        self.retry_after = retry_after


class AccessError(GraphError):
    """The token, its permissions, the pixel or the API version needs fixing by a person."""


class InvalidEventsError(GraphError):
    """Meta rejected the whole batch because of something in its events."""


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
        access_token: str,
        *,
        graph_url: str = "https://graph.facebook.com",
        api_version: str = "v26.0",
        app_secret: str | None = None,
        partner_agent: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._access_token = access_token
        self._base = f"{graph_url.rstrip('/')}/{api_version}"
        auth: dict[str, str] = {"access_token": access_token}
        if app_secret:
            auth["appsecret_proof"] = hmac.new(
                app_secret.encode(), access_token.encode(), hashlib.sha256
            ).hexdigest()
        if partner_agent:
            auth["partner_agent"] = partner_agent
        self._auth = auth
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Content-Type": "application/json"},
        )

    @classmethod
    def from_config(
        cls, config: Config, *, transport: httpx.BaseTransport | None = None
    ) -> GraphClient:
        if config.access_token is None:
            raise ValueError("a GraphClient needs PIXELMIRROR_ACCESS_TOKEN")
        return cls(
            config.access_token,
            graph_url=config.graph_url,
            api_version=config.api_version,
            app_secret=config.app_secret,
            partner_agent=config.partner_agent,
            timeout=config.request_timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"<GraphClient {self._base}>"

    def send(
        self, pixel_id: str, payloads: Sequence[bytes], *, test_event_code: str | None = None
    ) -> GraphResponse:
        """POST one batch; raises a :class:`GraphError` subclass unless Meta accepted it."""
        params = dict(self._auth)
        if test_event_code:
            params["test_event_code"] = test_event_code
        # The events were serialised when they were created: join their bytes, don't re-encode.
        body = b'{"data":[' + b",".join(payloads) + b"]," + json.dumps(params)[1:].encode()
        try:
            response = self._http.post(f"{self._base}/{pixel_id}/events", content=body)
        except httpx.TransportError as exc:
            raise TransientError(self._scrub(f"{type(exc).__name__}: {exc}")) from None
        return self._classify(response)

    def close(self) -> None:
        self._http.close()

    def _scrub(self, text: str) -> str:
        return text.replace(self._access_token, "[access token]")

    def _classify(self, response: httpx.Response) -> GraphResponse:
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
        raise self._error(response, answer)

    def _error(self, response: httpx.Response, answer: Any) -> GraphError:
        status = response.status_code
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, Mapping):
            # No verdict from Meta itself (a proxy, a load balancer, an outage page): retrying
            # is safe, while treating it as a rejection would dead-letter good events.
            snippet = " ".join(response.text.split())[:120]
            message = self._scrub(f"Graph answered HTTP {status}: {snippet!r}")
            if status in (401, 403):
                return AccessError(message, status=status)
            return TransientError(message, status=status, retry_after=_retry_after(response))
        code = _int_or_none(error.get("code"))
        subcode = _int_or_none(error.get("error_subcode"))
        user_message = error.get("error_user_msg")
        facts: dict[str, Any] = {
            "status": status,
            "code": code,
            "subcode": subcode,
            "user_message": self._scrub(str(user_message)) if user_message else None,
            "fbtrace_id": error.get("fbtrace_id"),
        }
        message = self._scrub(str(error.get("message") or "Graph API error"))
        if (
            code in _ACCESS_CODES
            or code == _DEPRECATED_VERSION
            or (code == _INVALID_PARAMETER and subcode == _UNKNOWN_OBJECT_SUBCODE)
        ):
            return AccessError(message, **facts)
        if (
            error.get("is_transient") is True
            or code in _THROTTLE_CODES
            or status >= 500
            or status == 429
        ):
            return TransientError(message, retry_after=_retry_after(response), **facts)
        if status in (401, 403):
            return AccessError(message, **facts)
        return InvalidEventsError(message, **facts)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


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

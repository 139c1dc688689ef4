"""The fake's judgement of one request, in the order Graph checks: path, method, API version,
body, token, ``appsecret_proof``, pixel, parameters, then each event by
:func:`pixelmirror.testing.rules.check_event`. The first problem found is the answer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pixelmirror.testing.rules import EventRejected, check_event, partner_agent_ok
from pixelmirror.testing.wire import (
    Parsed,
    graph_error,
    object_error,
    object_segment,
    version_tuple,
)

__all__ = ["Rejected", "TokenStatus", "check_request"]

_SUBCODE_SESSION_INVALIDATED = 460


class Rejected(Exception):
    """The request is refused: the HTTP status and the Graph error object to answer with."""

    def __init__(self, status: int, error: dict[str, object]) -> None:
        super().__init__(error.get("message"))
        self.status = status
        self.error = error


@dataclass(frozen=True)
class TokenStatus:
    """What the fake knows of a token, for one pixel."""

    known: bool
    revoked: bool
    allowed: bool


def check_request(
    p: Parsed,
    *,
    min_api_version: str,
    app_secret: str | None,
    token_status: Callable[[str, str], TokenStatus],
    clock: Callable[[], float],
) -> list[dict[str, Any]]:
    """The request's events when Graph would accept them all; else raise :class:`Rejected`."""
    if p.pixel_id is None:
        raise Rejected(404, object_error(p.method, object_segment(p.path)))
    if p.method != "POST":
        raise Rejected(400, object_error(p.method, p.pixel_id))
    version = version_tuple(p.api_version) if p.api_version is not None else None
    minimum = version_tuple(min_api_version)
    if version is None or minimum is None or version < minimum:
        message = (
            "(#2635) You are calling a deprecated version of the Ads API. "
            f"Please update to the latest version: {min_api_version}."
        )
        raise Rejected(400, graph_error(2635, message))
    if p.params_error is not None:
        raise Rejected(400, graph_error(100, p.params_error))
    _check_auth(p, p.pixel_id, app_secret, token_status)
    for name in ("test_event_code", "partner_agent"):
        if name in p.params and not isinstance(p.params[name], str):
            raise Rejected(400, graph_error(100, f"(#100) param {name} must be a string."))
    agent = p.string("partner_agent")
    if agent is not None and not partner_agent_ok(agent):
        message = (
            "(#100) param partner_agent must be shorter than 23 characters "
            "and contain at least two letters."
        )
        raise Rejected(400, graph_error(100, message))
    if p.data_error is not None or p.data is None:
        raise Rejected(400, graph_error(100, p.data_error or "(#100) param data is required"))
    now = clock()
    for index, event in enumerate(p.data):
        try:
            check_event(event, now)
        except EventRejected as exc:
            error = graph_error(
                100,
                "Invalid parameter",
                subcode=exc.subcode,
                user_title=exc.title,
                user_msg=f"event index {index}: {exc.detail}",
            )
            raise Rejected(400, error) from None
    return p.data


def _check_auth(
    p: Parsed,
    pixel_id: str,
    app_secret: str | None,
    token_status: Callable[[str, str], TokenStatus],
) -> None:
    token = p.params.get("access_token")
    if token is None or token == "":
        message = "An access token is required to request this resource."
        raise Rejected(401, graph_error(190, message))
    status = token_status(token, pixel_id) if isinstance(token, str) else None
    if status is not None and status.revoked:
        message = (
            "Error validating access token: The session has been invalidated because the "
            "user changed their password or Facebook has changed the session for security "
            "reasons."
        )
        raise Rejected(400, graph_error(190, message, subcode=_SUBCODE_SESSION_INVALIDATED))
    if status is None or not status.known:
        message = "Invalid OAuth access token - Cannot parse access token"
        raise Rejected(400, graph_error(190, message))
    assert isinstance(token, str)
    if app_secret is not None:
        proof = p.params.get("appsecret_proof")
        if not isinstance(proof, str) or not proof:
            message = "API calls from the server require an appsecret_proof argument"
            raise Rejected(400, graph_error(100, message))
        expected = hmac.new(app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), proof.encode()):
            message = "Invalid appsecret_proof provided in the API argument"
            raise Rejected(400, graph_error(100, message))
    if not status.allowed:
        raise Rejected(400, object_error(p.method, pixel_id))

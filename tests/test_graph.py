from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pixelmirror.delivery.graph import (
    AccessError,
    GraphClient,
    GraphError,
    InvalidEventsError,
    TransientError,
)

TOKEN = "EAAsecret-token-value"
PAYLOADS = [b'{"event_name":"Lead","event_id":"a"}', b'{"event_name":"Lead","event_id":"b"}']


def client_answering(
    handler: Callable[[httpx.Request], httpx.Response], **options: Any
) -> GraphClient:
    return GraphClient(TOKEN, transport=httpx.MockTransport(handler), **options)


def graph_error(code: int, subcode: int | None = None, **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"message": f"error {code}", "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error.update(extra)
    return {"error": error}


def test_request_shape_puts_the_token_in_the_body_not_the_url() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"events_received": 2, "fbtrace_id": "T1"})

    client = client_answering(
        handler,
        graph_url="http://graph.test/",
        api_version="v25.0",
        app_secret="shh",
        partner_agent="acmeshop",
    )
    answer = client.send("42", PAYLOADS, test_event_code="TEST9")
    assert (answer.events_received, answer.fbtrace_id) == (2, "T1")
    request = seen[0]
    assert str(request.url) == "http://graph.test/v25.0/42/events"
    assert TOKEN not in str(request.url)
    body = json.loads(request.content)
    assert body == {
        "data": [json.loads(p) for p in PAYLOADS],
        "access_token": TOKEN,
        "appsecret_proof": hmac.new(b"shh", TOKEN.encode(), hashlib.sha256).hexdigest(),
        "partner_agent": "acmeshop",
        "test_event_code": "TEST9",
    }
    assert TOKEN not in repr(client)


def respond(
    status: int, body: Any = None, text: str | None = None, **headers: str
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        pytest.param(
            respond(500, graph_error(1, is_transient=True)), TransientError, id="500-unknown"
        ),
        pytest.param(
            respond(503, text="<html>Service Unavailable</html>"), TransientError, id="503-html"
        ),
        pytest.param(respond(502, text="Bad Gateway"), TransientError, id="502-plain"),
        pytest.param(respond(429, graph_error(80004)), TransientError, id="429-throttle"),
        pytest.param(respond(400, graph_error(17)), TransientError, id="code-17-user-limit"),
        pytest.param(respond(400, graph_error(613)), TransientError, id="code-613"),
        pytest.param(
            respond(400, graph_error(2, is_transient=True)), TransientError, id="code-2-transient"
        ),
        pytest.param(
            respond(400, graph_error(999, is_transient=True)), TransientError, id="is-transient"
        ),
        pytest.param(respond(400, text="<html>Bad request</html>"), TransientError, id="400-html"),
        pytest.param(respond(200, text="OK"), TransientError, id="200-not-json"),
        pytest.param(respond(400, graph_error(190)), AccessError, id="code-190-token"),
        pytest.param(respond(400, graph_error(102)), AccessError, id="code-102-session"),
        pytest.param(respond(403, graph_error(10)), AccessError, id="code-10-permission"),
        pytest.param(respond(400, graph_error(200)), AccessError, id="code-200-permission"),
        pytest.param(respond(400, graph_error(2635)), AccessError, id="code-2635-version"),
        pytest.param(respond(400, graph_error(100, 33)), AccessError, id="unknown-pixel"),
        pytest.param(respond(401, text="Unauthorized"), AccessError, id="401-plain"),
        pytest.param(respond(400, graph_error(100, 2804003)), InvalidEventsError, id="too-old"),
        pytest.param(respond(400, graph_error(100)), InvalidEventsError, id="invalid-parameter"),
    ],
)
def test_answers_are_classified(
    handler: Callable[[httpx.Request], httpx.Response], expected: type[GraphError]
) -> None:
    with pytest.raises(GraphError) as caught:
        client_answering(handler).send("42", PAYLOADS)
    assert type(caught.value) is expected


def test_transport_errors_are_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(TransientError, match="ReadTimeout"):
        client_answering(handler).send("42", PAYLOADS)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        pytest.param({"Retry-After": "7"}, 7.0, id="retry-after-seconds"),
        pytest.param(
            {
                "Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT",
                "Date": "Wed, 21 Oct 2026 07:28:00 GMT",
            },
            30.0,
            id="retry-after-date",
        ),
        pytest.param(
            {
                "X-Business-Use-Case-Usage": json.dumps(
                    {"123": [{"type": "ads_management", "estimated_time_to_regain_access": 3}]}
                )
            },
            180.0,
            id="business-use-case-minutes",
        ),
        pytest.param({"Retry-After": "soon"}, None, id="unreadable"),
        pytest.param({}, None, id="none"),
    ],
)
def test_retry_after_is_read(headers: dict[str, str], wait: float | None) -> None:
    client = client_answering(respond(429, graph_error(80004), **headers))
    with pytest.raises(TransientError) as caught:
        client.send("42", PAYLOADS)
    assert caught.value.retry_after == wait


def test_error_fields_are_kept_and_the_token_is_scrubbed() -> None:
    body = graph_error(
        100,
        2804003,
        error_user_msg=f"event index 1 too old; token {TOKEN}",
        fbtrace_id="Ftrace",
    )
    body["error"]["message"] = f"Invalid parameter for {TOKEN}"
    with pytest.raises(InvalidEventsError) as caught:
        client_answering(respond(400, body)).send("42", PAYLOADS)
    error = caught.value
    assert (error.status, error.code, error.subcode, error.fbtrace_id) == (
        400,
        100,
        2804003,
        "Ftrace",
    )
    text = str(error)
    assert TOKEN not in text
    assert TOKEN not in repr(error.args)
    assert "event index 1 too old" in text
    assert "subcode 2804003" in text

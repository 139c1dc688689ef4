from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pixelmirror import meta
from pixelmirror.delivery.graph import (
    AccessError,
    GraphClient,
    GraphError,
    InvalidEventsError,
    RequestError,
    TransientError,
    fault_of,
    token_fingerprint,
)
from pixelmirror.testing import FakeGraphAPI

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


def meta_error(code: int, message: str = "", subcode: int | None = None, **extra: Any) -> Any:
    body = graph_error(code, subcode, **extra)
    if message:
        body["error"]["message"] = message
    return body


THROTTLE_CODES = [1, 2, 4, 17, 32, 341, 613, *range(80000, 80015)]
ACCESS_CODES = [190, 102, 10, *range(200, 300)]

# Every kind of answer Meta gives to a rejected request, and what a sender must make of it.
META_ANSWERS = [
    *(
        pytest.param(respond(400, graph_error(code)), TransientError, id=f"throttle-{code}")
        for code in THROTTLE_CODES
    ),
    pytest.param(respond(429, graph_error(80004)), TransientError, id="429-throttle"),
    pytest.param(respond(429, graph_error(100)), TransientError, id="429-any-code"),
    pytest.param(respond(500, graph_error(1, is_transient=True)), TransientError, id="500-unknown"),
    pytest.param(respond(503, graph_error(100)), TransientError, id="5xx-any-code"),
    pytest.param(
        respond(400, graph_error(999, is_transient=True)), TransientError, id="is-transient"
    ),
    *(
        pytest.param(respond(400, graph_error(code)), AccessError, id=f"access-{code}")
        for code in ACCESS_CODES
    ),
    pytest.param(respond(400, graph_error(190, 460)), AccessError, id="token-revoked"),
    pytest.param(respond(403, graph_error(999)), AccessError, id="403-any-code"),
    pytest.param(respond(400, graph_error(100, 33)), RequestError, id="unknown-pixel"),
    pytest.param(respond(400, graph_error(2635)), RequestError, id="api-version-retired"),
    pytest.param(
        respond(
            400, meta_error(100, "API calls from the server require an appsecret_proof argument")
        ),
        RequestError,
        id="appsecret-proof-missing",
    ),
    pytest.param(
        respond(400, meta_error(100, "Invalid appsecret_proof provided in the API argument")),
        RequestError,
        id="appsecret-proof-wrong",
    ),
    pytest.param(respond(400, meta_error(100, "(#100) Invalid parameter")), RequestError, id="100"),
    pytest.param(
        respond(400, meta_error(100, "(#100) param partner_agent must be shorter")),
        RequestError,
        id="100-about-a-parameter",
    ),
    pytest.param(respond(400, graph_error(100, 1487390)), RequestError, id="100-other-subcode"),
    pytest.param(respond(400, graph_error(3)), RequestError, id="unknown-code"),
    *(
        pytest.param(respond(400, graph_error(100, sub)), InvalidEventsError, id=f"event-{sub}")
        for sub in (2804003, 2804004, 2804019, 2804050)
    ),
    pytest.param(
        respond(400, meta_error(100, "Invalid parameter", error_user_msg="event index 3: bad")),
        InvalidEventsError,
        id="user-msg-names-event-index",
    ),
    pytest.param(
        respond(400, meta_error(100, "(#100) param data[3][event_time] must be an integer")),
        InvalidEventsError,
        id="message-names-data-index",
    ),
    pytest.param(
        respond(400, meta_error(100, "Invalid parameter", error_user_msg="Event 12 is too old")),
        InvalidEventsError,
        id="user-msg-names-event",
    ),
    pytest.param(
        respond(503, text="<html>Service Unavailable</html>"), TransientError, id="503-html"
    ),
    pytest.param(respond(502, text="Bad Gateway"), TransientError, id="502-plain"),
    pytest.param(respond(400, text="<html>Bad request</html>"), TransientError, id="400-html"),
    pytest.param(respond(200, text="OK"), TransientError, id="200-not-json"),
    pytest.param(respond(200, {"ok": True}), TransientError, id="200-not-an-answer"),
    pytest.param(respond(401, text="Unauthorized"), AccessError, id="401-plain"),
    pytest.param(respond(403, text="Forbidden"), AccessError, id="403-plain"),
]


@pytest.mark.parametrize(("handler", "expected"), META_ANSWERS)
def test_every_error_meta_can_answer_is_classified(
    handler: Callable[[httpx.Request], httpx.Response], expected: type[GraphError]
) -> None:
    with pytest.raises(GraphError) as caught:
        client_answering(handler).send("42", PAYLOADS)
    assert type(caught.value) is expected


@pytest.mark.parametrize("app_secret", [None, "the-wrong-secret"], ids=["missing", "wrong"])
def test_an_app_secret_fault_is_a_request_error_not_an_invalid_event(
    app_secret: str | None,
) -> None:
    fake = FakeGraphAPI(app_secret="the-right-secret")
    client = GraphClient(TOKEN, app_secret=app_secret, transport=fake.transport)
    with pytest.raises(RequestError, match="appsecret_proof") as caught:
        client.send("42", PAYLOADS)
    assert caught.value.token_fingerprint == token_fingerprint(TOKEN)
    assert TOKEN not in caught.value.token_fingerprint


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


def _echo_body(text: str) -> Any:
    return meta_error(100, f"Invalid parameter: {text}", error_user_msg=f"as sent: {text}")


@pytest.mark.parametrize("kept", range(8, len(TOKEN) + 1))
def test_a_cut_echo_of_the_token_is_scrubbed_too(kept: int) -> None:
    # A proxy or Meta itself may echo the token cut short: its first 8+ characters still go.
    echo = TOKEN[:kept]
    with pytest.raises(GraphError) as caught:
        client_answering(respond(400, _echo_body(f"{echo}..."))).send("42", PAYLOADS)
    assert TOKEN[:8] not in str(caught.value)
    with pytest.raises(GraphError) as caught:
        client_answering(respond(502, text=f"upstream said {echo}")).send("42", PAYLOADS)
    assert TOKEN[:8] not in str(caught.value)


@pytest.mark.parametrize("offset", range(0, 130))
def test_the_token_is_scrubbed_before_a_long_answer_is_cut(offset: int) -> None:
    # Wherever the 120-character cut falls, no piece of the token survives it.
    body = "x" * offset + TOKEN + " and more text after it" * 5
    with pytest.raises(TransientError) as caught:
        client_answering(respond(502, text=body)).send("42", PAYLOADS)
    assert TOKEN[:4] not in str(caught.value)


@pytest.mark.parametrize("fault", list(meta.Fault))
def test_fault_of_an_error_is_the_fault_it_was_raised_for(fault: meta.Fault) -> None:
    raised = {
        meta.Fault.RETRY: TransientError,
        meta.Fault.ACCESS: AccessError,
        meta.Fault.REQUEST: RequestError,
        meta.Fault.EVENTS: InvalidEventsError,
    }[fault]
    assert fault_of(raised("refused")) is fault

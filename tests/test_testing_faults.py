"""FakeGraphAPI's fault injection: scripted with ``fail_next``, random with ``failure_rate``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from fakegraph import (
    GRAPH,
    error_of,
    fixed_clock,
    make_event,
    post,
    url,
)
from pixelmirror.testing import FakeGraphAPI


def test_fail_next_with_graph_error(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    expired = FakeGraphAPI.graph_error(
        190, "Error validating access token: Session has expired", subcode=463
    )
    clocked_fake.fail_next(400, error=expired)
    response = post(clocked_client, [make_event("x")])

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == 190
    assert error["error_subcode"] == 463
    assert error["message"] == "Error validating access token: Session has expired"
    assert error["fbtrace_id"]
    assert clocked_fake.events == []
    assert clocked_fake.requests[-1].status == 400
    assert clocked_fake.requests[-1].error_code == 190
    # The fault is consumed: the next request is validated normally.
    assert post(clocked_client, [make_event("x")]).status_code == 200


def test_fail_next_keeps_a_given_fbtrace_id(
    clocked_client: httpx.Client, clocked_fake: FakeGraphAPI
) -> None:
    clocked_fake.fail_next(500, error={"message": "boom", "code": 2, "fbtrace_id": "TRACE"})
    assert error_of(post(clocked_client, [make_event()]))["fbtrace_id"] == "TRACE"


def test_fail_next_raw_body_and_headers(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    clocked_fake.fail_next(
        502, body="<html><body>Bad Gateway</body></html>", headers={"Retry-After": "3"}
    )
    response = post(clocked_client, [make_event()])
    assert response.status_code == 502
    assert response.text == "<html><body>Bad Gateway</body></html>"
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["retry-after"] == "3"
    assert clocked_fake.events == []


def test_fail_next_headers_override_content_type(
    clocked_client: httpx.Client, clocked_fake: FakeGraphAPI
) -> None:
    clocked_fake.fail_next(500, body=b"oops", headers={"content-type": "application/octet-stream"})
    response = post(clocked_client, [make_event()])
    assert response.headers.get_list("content-type") == ["application/octet-stream"]


def test_fail_next_times_and_fifo(clocked_fake: FakeGraphAPI, clocked_client: httpx.Client) -> None:
    clocked_fake.fail_next(503, times=2)
    clocked_fake.fail_next(429, headers={"Retry-After": "1"})
    statuses = [post(clocked_client, [make_event(f"e{i}")]).status_code for i in range(4)]
    assert statuses == [503, 503, 429, 200]
    assert clocked_fake.event_ids() == ["e3"]
    assert [r.status for r in clocked_fake.requests] == [503, 503, 429, 200]


def test_fail_next_default_bodies(clocked_fake: FakeGraphAPI, clocked_client: httpx.Client) -> None:
    clocked_fake.fail_next(500)
    clocked_fake.fail_next(429)
    clocked_fake.fail_next(403)
    clocked_fake.fail_next(200)
    r500, r429, r403, r200 = (post(clocked_client, [make_event()]) for _ in range(4))
    assert error_of(r500)["code"] == 1
    assert error_of(r500)["is_transient"] is True
    assert error_of(r429)["code"] == 80004
    assert error_of(r429)["is_transient"] is True
    assert error_of(r403)["code"] == 100
    # A 200 that was never recorded: "Meta said OK, then lost it".
    assert r200.json()["events_received"] == 1
    assert clocked_fake.events == []


def test_fail_next_takes_precedence_over_random_faults() -> None:
    fake = FakeGraphAPI(failure_rate=1.0, failure_statuses=[503], seed=1, clock=fixed_clock)
    fake.fail_next(418, error={"message": "teapot", "code": 1})
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        assert post(c, [make_event()]).status_code == 418
        assert post(c, [make_event()]).status_code == 503


def test_fail_next_skips_validation(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    clocked_fake.fail_next(500)
    assert post(clocked_client, [make_event()], token="not-a-valid-token").status_code == 500


def test_fail_next_timeout_in_process(
    clocked_fake: FakeGraphAPI, clocked_client: httpx.Client
) -> None:
    clocked_fake.fail_next(timeout=True)
    with pytest.raises(httpx.ReadTimeout) as excinfo:
        post(clocked_client, [make_event()])
    assert excinfo.value.request.url.path == url()
    assert clocked_fake.events == []
    assert clocked_fake.requests[-1].status is None
    assert post(clocked_client, [make_event()]).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"times": 0}, "times", id="times-zero"),
        pytest.param({"error": {"code": 1}, "body": "x"}, "not both", id="error-and-body"),
        pytest.param({"status": 42}, "status", id="bad-status"),
    ],
)
def test_fail_next_argument_checks(
    clocked_fake: FakeGraphAPI, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        clocked_fake.fail_next(**kwargs)


def test_graph_error_helper() -> None:
    assert FakeGraphAPI.graph_error(80004, "slow down", subcode=2446079, transient=True) == {
        "message": "slow down",
        "type": "OAuthException",
        "code": 80004,
        "error_subcode": 2446079,
        "is_transient": True,
    }
    assert FakeGraphAPI.graph_error(1, "x", type="GraphMethodException") == {
        "message": "x",
        "type": "GraphMethodException",
        "code": 1,
        "is_transient": False,
    }


def test_random_faults_statuses_and_bodies() -> None:
    fake = FakeGraphAPI(failure_rate=1.0, seed=1234, clock=fixed_clock)
    seen: dict[int, list[httpx.Response]] = {}
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        for i in range(60):
            response = post(c, [make_event(f"e{i}")])
            seen.setdefault(response.status_code, []).append(response)

    assert set(seen) == {500, 503, 429}
    for response in seen[500]:
        error = error_of(response)
        assert error["code"] == 1
        assert error["message"] == "An unknown error occurred"
        assert error["type"] == "OAuthException"
        assert error["is_transient"] is True
        assert error["fbtrace_id"]
    for response in seen[503]:
        assert "Service Unavailable" in response.text
        assert response.headers["content-type"].startswith("text/html")
        with pytest.raises(json.JSONDecodeError):
            response.json()
    throttle_codes = set()
    for response in seen[429]:
        error = error_of(response)
        assert error["is_transient"] is True
        throttle_codes.add(error["code"])
    assert throttle_codes == {80004, 17}
    for responses in seen.values():
        assert all("retry-after" not in r.headers for r in responses)
    assert fake.events == []
    assert len(fake.requests) == 60


def test_random_faults_are_reproducible_with_a_seed() -> None:
    def run(seed: int) -> list[int]:
        fake = FakeGraphAPI(failure_rate=0.5, seed=seed, clock=fixed_clock)
        with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
            return [post(c, [make_event()]).status_code for _ in range(40)]

    first = run(99)
    assert first == run(99)
    assert 200 in first
    assert set(first) - {200}


def test_random_faults_only_drop_faulted_requests() -> None:
    fake = FakeGraphAPI(failure_rate=0.4, failure_statuses=[500], seed=5, clock=fixed_clock)
    accepted = []
    with httpx.Client(transport=fake.transport, base_url=GRAPH) as c:
        for i in range(50):
            if post(c, [make_event(f"e{i}")]).status_code == 200:
                accepted.append(f"e{i}")
    assert 0 < len(accepted) < 50
    assert fake.event_ids() == accepted

"""FakeGraphAPI over real HTTP on loopback, and the ``python -m pixelmirror.testing`` command."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from fakegraph import (
    PIXEL,
    TOKEN,
    error_of,
    make_event,
    post,
    url,
)
from pixelmirror.testing import FakeGraphAPI


@pytest.fixture
def served(clocked_fake: FakeGraphAPI) -> Iterator[httpx.Client]:
    with clocked_fake.serve() as base_url, httpx.Client(base_url=base_url, timeout=10) as c:
        yield c


def test_valid_batch_over_loopback(clocked_fake: FakeGraphAPI, served: httpx.Client) -> None:
    response = post(served, [make_event("a"), make_event("b")])
    assert response.status_code == 200
    assert response.json()["events_received"] == 2
    assert response.headers["content-length"] == str(len(response.content))
    assert clocked_fake.event_ids() == ["a", "b"]
    # Keep-alive: the same client reuses its connection for the next request.
    assert post(served, [make_event("c")]).status_code == 200
    assert clocked_fake.event_ids() == ["a", "b", "c"]


def test_form_encoded_over_loopback(clocked_fake: FakeGraphAPI, served: httpx.Client) -> None:
    response = served.post(
        url(), data={"data": json.dumps([make_event("l")]), "access_token": TOKEN}
    )
    assert response.status_code == 200
    assert clocked_fake.event_ids() == ["l"]


def test_chunked_body_over_loopback(clocked_fake: FakeGraphAPI, served: httpx.Client) -> None:
    payload = json.dumps({"data": [make_event("chunked")], "access_token": TOKEN}).encode()

    def chunks() -> Iterator[bytes]:
        yield payload[:10]
        yield payload[10:]

    response = served.post(url(), content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert clocked_fake.event_ids() == ["chunked"]


def test_fail_next_over_loopback(clocked_fake: FakeGraphAPI, served: httpx.Client) -> None:
    clocked_fake.fail_next(
        429,
        error=FakeGraphAPI.graph_error(17, "(#17) User request limit reached", transient=True),
        headers={"Retry-After": "7"},
    )
    clocked_fake.fail_next(503, body="Service Unavailable")
    clocked_fake.fail_next(timeout=True)

    throttled = post(served, [make_event()])
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "7"
    assert error_of(throttled)["code"] == 17

    unavailable = post(served, [make_event()])
    assert unavailable.status_code == 503
    assert unavailable.text == "Service Unavailable"
    assert unavailable.headers["content-type"].startswith("text/plain")

    with pytest.raises(httpx.TransportError):
        post(served, [make_event()])
    assert clocked_fake.requests[-1].status is None

    # The client recovers on a fresh connection.
    assert post(served, [make_event("after")]).status_code == 200
    assert clocked_fake.event_ids() == ["after"]


def test_wait_for_background_sender(clocked_fake: FakeGraphAPI) -> None:
    with clocked_fake.serve() as base_url:

        def sender() -> None:
            with httpx.Client(base_url=base_url, timeout=10) as c:
                for i in range(5):
                    post(c, [make_event(f"bg{i}")])

        thread = threading.Thread(target=sender)
        thread.start()
        try:
            assert clocked_fake.wait_for(5, timeout=10)
        finally:
            thread.join()
    assert sorted(clocked_fake.event_ids()) == [f"bg{i}" for i in range(5)]
    assert clocked_fake.wait_for(5, timeout=0)
    assert not clocked_fake.wait_for(6, timeout=0.01)


def test_concurrent_senders_over_loopback(clocked_fake: FakeGraphAPI, served: httpx.Client) -> None:
    def send(i: int) -> int:
        return post(served, [make_event(f"c{i}-a"), make_event(f"c{i}-b")]).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, range(40)))
    assert statuses == [200] * 40
    assert len(clocked_fake.events) == 80
    assert len(set(clocked_fake.event_ids())) == 80
    assert len(clocked_fake.requests) == 40


def test_server_is_quiet_and_stops(
    clocked_fake: FakeGraphAPI, capfd: pytest.CaptureFixture[str]
) -> None:
    with clocked_fake.serve() as base_url, httpx.Client(base_url=base_url) as c:
        assert post(c, [make_event()]).status_code == 200
        assert post(c, [make_event()], token=None).status_code == 401
        assert c.get("/nowhere").status_code == 404
        head = c.head(url())
        assert head.status_code == 400
        assert head.content == b""
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out == ""
    with pytest.raises(httpx.TransportError), httpx.Client(base_url=base_url) as c:
        c.post(url(), json={})


def test_serve_closes_idle_keep_alive_connections(clocked_fake: FakeGraphAPI) -> None:
    with clocked_fake.serve() as base_url, httpx.Client(base_url=base_url, timeout=10) as c:
        with clocked_fake.serve():
            pass  # a second server, stopped with no connection ever made
        assert post(c, [make_event()]).status_code == 200
        # The client's connection sits idle in its pool while the server stops.
    handlers = [t for t in threading.enumerate() if "process_request_thread" in t.name]
    for thread in handlers:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in handlers)


@contextmanager
def command_line_server(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python -m pixelmirror.testing --port 0 ARGS`` in a subprocess; yields it and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixelmirror.testing", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        assert banner.startswith("FakeGraphAPI listening on http://127.0.0.1:"), banner
        yield proc, banner.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_command_line_server_prints_accepted_events() -> None:
    with command_line_server("--token", TOKEN) as (proc, base_url):
        event = make_event("cli", event_time=int(time.time()))
        with httpx.Client(base_url=base_url, timeout=10) as c:
            response = post(c, [event], test_event_code="TEST1")
            refused = post(c, [event], token="EAAB-other")
        assert response.status_code == 200, response.text
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line == {
            "pixel_id": PIXEL,
            "test_event_code": "TEST1",
            "partner_agent": None,
            "event": event,
        }
        assert refused.status_code == 400
        assert error_of(refused)["code"] == 190


def test_command_line_failure_rate_fails_every_request_at_one() -> None:
    with command_line_server("--failure-rate", "1", "--seed", "7") as (proc, base_url):
        event = make_event("cli", event_time=int(time.time()))
        with httpx.Client(base_url=base_url, timeout=10) as c:
            statuses = [post(c, [event]).status_code for _ in range(6)]
    out, _ = proc.communicate(timeout=10)
    assert set(statuses) <= {500, 503, 429}
    assert out == ""  # nothing was accepted, so nothing was printed


def test_a_server_left_open_does_not_keep_the_interpreter_from_exiting() -> None:
    # A demo keeps its fake served for the life of the process; the interpreter's exit closes
    # it after the server thread is gone, and must not wait for that thread forever.
    script = (
        "import contextlib\n"
        "from pixelmirror.testing import FakeGraphAPI\n"
        "servers = contextlib.ExitStack()\n"
        "print(servers.enter_context(FakeGraphAPI().serve()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("http://127.0.0.1:")

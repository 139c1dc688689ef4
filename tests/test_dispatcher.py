from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest

from conftest import TOKEN
from pixelmirror.config import Config
from pixelmirror.delivery.dispatcher import DeliveryCounts, Dispatcher
from pixelmirror.delivery.graph import GraphClient
from pixelmirror.events import DAY, ServerEvent
from pixelmirror.outbox.base import Claimed
from pixelmirror.outbox.memory import MemoryOutbox
from pixelmirror.testing import FakeGraphAPI


class RecordingOutbox(MemoryOutbox):
    """A memory outbox that remembers the delays it was asked to wait."""

    def __init__(self) -> None:
        super().__init__(max_events=10_000)
        self.delays: list[float] = []

    def release(self, claims: Sequence[Claimed], *, delay: float, failed: bool = True) -> None:
        self.delays.append(delay)
        super().release(claims, delay=delay, failed=failed)


class RenewingOutbox(RecordingOutbox):
    """A memory outbox that also remembers which thread renewed what, and when."""

    def __init__(self) -> None:
        super().__init__()
        self.renewers: list[threading.Thread] = []

    def renew(self, claims: Sequence[Claimed], *, lease: float) -> list[Claimed]:
        lost = super().renew(claims, lease=lease)
        self.renewers.append(threading.current_thread())
        return lost


class Gate:
    """A transport that holds every request until :attr:`opened`, then lets ``fake`` answer."""

    def __init__(self, fake: FakeGraphAPI) -> None:
        self.fake = fake
        self.opened = threading.Event()
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        assert self.opened.wait(timeout=30), "the test never opened the gate"
        return self.fake.handle(request)


@pytest.fixture
def outbox() -> RecordingOutbox:
    return RecordingOutbox()


@pytest.fixture
def dispatcher(fake: FakeGraphAPI, outbox: RecordingOutbox) -> Iterator[Dispatcher]:
    client = GraphClient(TOKEN, transport=fake.transport)
    dispatcher = Dispatcher(outbox, client, retry_backoff=0.5, retry_backoff_max=8.0)
    yield dispatcher
    dispatcher.stop(timeout=5)
    client.close()


def lead(pixel_id: str = "111", **overrides: Any) -> ServerEvent:
    arguments: dict[str, Any] = {
        "pixel_id": pixel_id,
        "action_source": "system_generated",
        "user_data": {"external_id": "cust-1", "email": "ann@example.com"},
    }
    arguments.update(overrides)
    return ServerEvent.create("Lead", **arguments)


def with_raw_email(event: ServerEvent) -> ServerEvent:
    """An event that leaks a raw email: Meta (and the fake) reject its whole batch."""
    body = json.loads(event.payload)
    body["user_data"]["em"] = "ann@example.com"
    return ServerEvent(
        pixel_id=event.pixel_id,
        event_id=event.event_id,
        event_name=event.event_name,
        event_time=event.event_time,
        action_source=event.action_source,
        payload=json.dumps(body).encode(),
    )


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def drain(dispatcher: Dispatcher) -> None:
    while dispatcher.deliver_next():
        pass


def test_a_batch_is_sent_in_one_request_and_acked(
    dispatcher: Dispatcher, fake: FakeGraphAPI, outbox: RecordingOutbox
) -> None:
    events = [lead() for _ in range(5)]
    outbox.put(events)
    drain(dispatcher)
    assert fake.event_ids() == [e.event_id for e in events]
    assert len(fake.requests) == 1
    assert outbox.counts().unfinished == 0
    assert dispatcher.counts.sent == 5


def test_batches_respect_batch_size_and_pixel(fake: FakeGraphAPI, outbox: RecordingOutbox) -> None:
    client = GraphClient(TOKEN, transport=fake.transport)
    dispatcher = Dispatcher(outbox, client, batch_size=3)
    outbox.put([lead("111") for _ in range(4)] + [lead("222") for _ in range(2)])
    drain(dispatcher)
    assert sorted((r.pixel_id, r.event_count) for r in fake.requests) == [
        ("111", 1),
        ("111", 3),
        ("222", 2),
    ]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"status": 500}, id="500"),
        pytest.param({"status": 503, "body": "<html>Service Unavailable</html>"}, id="503-html"),
        pytest.param({"status": 500, "timeout": True}, id="timeout"),
        pytest.param(
            {"status": 400, "error": FakeGraphAPI.graph_error(17, "User request limit reached")},
            id="throttle-17",
        ),
    ],
)
def test_transient_failures_are_retried_with_the_same_event(
    dispatcher: Dispatcher, fake: FakeGraphAPI, outbox: RecordingOutbox, fault: dict[str, Any]
) -> None:
    event = lead()
    outbox.put([event])
    fake.fail_next(**fault)
    dispatcher.deliver_next()
    assert fake.event_ids() == []
    assert outbox.counts().pending == 1
    assert dispatcher.counts.retried == 1
    # The first retry waits between half and all of the base backoff (jitter).
    assert 0.25 <= outbox.delays[0] <= 0.5
    claims = outbox.claim(10, lease=60, skip_pixels=())
    assert claims == []  # not due yet
    _make_due(outbox)
    drain(dispatcher)
    assert fake.event_ids() == [event.event_id]
    received = fake.events[0].data
    assert (received["event_id"], received["event_time"]) == (event.event_id, event.event_time)


def _make_due(outbox: MemoryOutbox) -> None:
    """Move every delayed retry to now, instead of sleeping through its delay."""
    outbox._delayed = [(0.0, *rest) for _, *rest in outbox._delayed]  # type: ignore[misc]


def test_backoff_doubles_per_attempt_and_honours_retry_after(
    dispatcher: Dispatcher, fake: FakeGraphAPI, outbox: RecordingOutbox
) -> None:
    outbox.put([lead()])
    for _ in range(3):
        fake.fail_next(500)
        dispatcher.deliver_next()
        _make_due(outbox)
    fake.fail_next(
        429, error=FakeGraphAPI.graph_error(80004, "Too many calls"), headers={"Retry-After": "30"}
    )
    dispatcher.deliver_next()
    first, second, third, throttled = outbox.delays
    assert 0.25 <= first <= 0.5
    assert 0.5 <= second <= 1.0
    assert 1.0 <= third <= 2.0
    assert throttled == 30.0


def test_a_bad_token_pauses_only_its_pixel_and_keeps_the_events(
    dispatcher: Dispatcher,
    fake: FakeGraphAPI,
    outbox: RecordingOutbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stuck, flowing = lead("111"), lead("222")
    outbox.put([stuck, flowing])
    fake.fail_next(400, error=FakeGraphAPI.graph_error(190, "Error validating access token"))
    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        drain(dispatcher)
    assert dispatcher.paused_pixels == ("111",)
    assert fake.event_ids() == [flowing.event_id]
    assert outbox.counts().pending == 1
    assert dispatcher.counts.retried == 0
    assert "PAUSED pixel 111" in caplog.text
    assert TOKEN not in caplog.text
    # After the pause (here: cut short) the pixel is tried again and its events flow.
    dispatcher._paused["111"] = 0.0
    _make_due(outbox)
    drain(dispatcher)
    assert fake.event_ids() == [flowing.event_id, stuck.event_id]
    assert dispatcher.paused_pixels == ()


def test_one_invalid_event_is_isolated_and_the_rest_delivered(
    dispatcher: Dispatcher, fake: FakeGraphAPI, outbox: RecordingOutbox
) -> None:
    events = [lead() for _ in range(9)]
    poisoned = with_raw_email(lead())
    events.insert(4, poisoned)
    outbox.put(events)
    drain(dispatcher)
    assert sorted(fake.event_ids()) == sorted(e.event_id for e in events if e is not poisoned)
    assert outbox.counts().dead == 1
    (letter,) = outbox.dead_letters()
    assert letter.event.event_id == poisoned.event_id
    assert "2804019" in letter.reason or "hash" in letter.reason.lower()
    assert dispatcher.counts.dead == 1
    assert dispatcher.counts.sent == 9


def test_events_too_old_to_send_are_dead_lettered_before_sending(
    dispatcher: Dispatcher, fake: FakeGraphAPI, outbox: RecordingOutbox
) -> None:
    fresh = lead()
    stale = lead(event_time=time.time() - 7 * DAY + 30)  # valid now, too old by send time
    outbox.put([stale, fresh])
    drain(dispatcher)
    assert fake.event_ids() == [fresh.event_id]
    (letter,) = outbox.dead_letters()
    assert letter.event.event_id == stale.event_id
    assert letter.reason.startswith("expired")
    assert dispatcher.counts.expired == 1


def test_flush_sends_everything_from_the_background_thread(
    dispatcher: Dispatcher, fake: FakeGraphAPI, outbox: RecordingOutbox
) -> None:
    dispatcher.flush_interval = 3600  # only flush() may wake it
    dispatcher.start()
    events = [lead() for _ in range(50)]
    outbox.put(events)
    assert dispatcher.flush(timeout=10)
    assert sorted(fake.event_ids()) == sorted(e.event_id for e in events)


def test_flush_reports_false_at_its_timeout_during_an_outage(
    dispatcher: Dispatcher, fake: FakeGraphAPI, outbox: RecordingOutbox
) -> None:
    fake.fail_next(503, times=1000)
    dispatcher.start()
    outbox.put([lead()])
    assert dispatcher.flush(timeout=0.3) is False
    assert outbox.counts().unfinished == 1


def test_stop_releases_a_claim_taken_while_stopping(
    fake: FakeGraphAPI, outbox: RecordingOutbox
) -> None:
    client = GraphClient(TOKEN, transport=fake.transport)
    dispatcher = Dispatcher(outbox, client)
    outbox.put([lead()])
    dispatcher._stopping.set()
    assert dispatcher.deliver_next() is False
    assert outbox.counts().pending == 1
    assert fake.requests == []


@pytest.mark.parametrize("request_timeout", [1.0, 10.0, 60.0])
def test_the_lease_comes_from_its_setting_whatever_the_request_timeout(
    fake: FakeGraphAPI, outbox: RecordingOutbox, request_timeout: float
) -> None:
    client = GraphClient(TOKEN, transport=fake.transport)
    default = Dispatcher.from_config(Config(request_timeout=request_timeout), outbox, client)
    tuned = Config(request_timeout=request_timeout, lease=90)
    assert (default.lease, Dispatcher.from_config(tuned, outbox, client).lease) == (30.0, 90.0)
    client.close()


def test_a_batch_in_flight_keeps_its_lease_however_long_meta_takes(fake: FakeGraphAPI) -> None:
    outbox = RenewingOutbox()
    gate = Gate(fake)
    client = GraphClient(TOKEN, transport=gate.transport)
    dispatcher = Dispatcher(outbox, client, lease=1.2)  # renewed every 0.4 s
    events = [lead() for _ in range(3)]
    outbox.put(events)
    sender = threading.Thread(target=dispatcher.deliver_next)
    sender.start()
    try:
        # Four renewals: more than the first lease has passed since the claim.
        wait_until(lambda: len(outbox.renewers) >= 4)
        assert outbox.claim(10, lease=60) == []  # no other sender may take the batch
        assert outbox.counts().in_flight == 3
    finally:
        gate.opened.set()
        sender.join(timeout=10)
    client.close()

    assert fake.event_ids() == [event.event_id for event in events]
    assert outbox.counts().unfinished == 0
    heartbeat = outbox.renewers[-1]
    assert heartbeat is not sender
    wait_until(lambda: not heartbeat.is_alive())  # nothing left in flight: it ends


class OnceUnreachableOutbox(RenewingOutbox):
    """Its first renewal fails, as when the store is briefly out of reach."""

    def renew(self, claims: Sequence[Claimed], *, lease: float) -> list[Claimed]:
        if not self.renewers:
            self.renewers.append(threading.current_thread())
            raise ConnectionError("outbox unreachable")
        return super().renew(claims, lease=lease)


def test_a_failed_renewal_is_logged_and_the_next_beat_renews(
    fake: FakeGraphAPI, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = OnceUnreachableOutbox()
    gate = Gate(fake)
    client = GraphClient(TOKEN, transport=gate.transport)
    dispatcher = Dispatcher(outbox, client, lease=1.2)
    outbox.put([lead()])
    sender = threading.Thread(target=dispatcher.deliver_next)
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        sender.start()
        try:
            wait_until(lambda: len(outbox.renewers) >= 4)  # one failed, three renewed
            assert outbox.claim(10, lease=60) == []
        finally:
            gate.opened.set()
            sender.join(timeout=10)
    client.close()

    assert "could not renew the lease of 1 event(s) in flight" in caplog.text
    assert outbox.counts().unfinished == 0
    assert dispatcher.counts.sent == 1


def test_a_batch_being_halved_keeps_its_lease_to_the_last_half() -> None:
    slow = FakeGraphAPI(access_tokens={TOKEN}, latency=0.6)
    outbox = RecordingOutbox()
    good = [lead() for _ in range(3)]
    poisoned = with_raw_email(lead())
    outbox.put([good[0], poisoned, *good[1:]])
    client = GraphClient(TOKEN, transport=slow.transport)
    first = Dispatcher(outbox, client, lease=1.5)
    rival = Dispatcher(outbox, client, lease=1.5, flush_interval=0.01)
    sender = threading.Thread(target=first.deliver_next)
    sender.start()
    wait_until(lambda: outbox.counts().in_flight == 4)
    rival.start()  # polls all along: it would take any claim whose lease ran out
    try:
        # Halved 4 → 2 → 1 + 1, then 2: five requests, two leases long.
        sender.join(timeout=30)
    finally:
        rival.stop(timeout=10)
    client.close()

    assert collections.Counter(slow.event_ids()) == {event.event_id: 1 for event in good}
    assert len(slow.requests) == 5
    assert (first.counts.sent, first.counts.dead) == (3, 1)
    assert rival.counts == DeliveryCounts()
    assert outbox.counts().unfinished == 0

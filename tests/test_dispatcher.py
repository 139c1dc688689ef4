from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import PIXEL, TOKEN, MakeMirror, lead
from pixelmirror.config import Config
from pixelmirror.delivery.dispatcher import EXPIRY_MARGIN, DeliveryCounts, Dispatcher
from pixelmirror.delivery.errors import AccessError
from pixelmirror.delivery.graph import GraphClient, token_fingerprint
from pixelmirror.delivery.sink import Delivered
from pixelmirror.events import BatchKey, ServerEvent
from pixelmirror.meta import DAY
from pixelmirror.outbox.base import Claimed
from pixelmirror.outbox.memory import MemoryOutbox
from pixelmirror.testing import FakeGraphAPI
from waiting import wait_until


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
    # Once resumed, the pixel is tried again at once: the outbox holds no delay for it.
    dispatcher.resume("111")
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


class PausingAckOutbox(RecordingOutbox):
    """A memory outbox whose ``ack`` acks, then holds the sender until :attr:`go`."""

    def __init__(self) -> None:
        super().__init__()
        self.acked = threading.Event()
        self.go = threading.Event()

    def ack(self, claims: Sequence[Claimed]) -> None:
        super().ack(claims)
        self.acked.set()
        assert self.go.wait(timeout=30), "the test never let the sender go"


def test_flush_returns_once_the_sent_batch_is_counted_not_only_acked(
    fake: FakeGraphAPI,
) -> None:
    outbox = PausingAckOutbox()
    client = GraphClient(TOKEN, transport=fake.transport)
    dispatcher = Dispatcher(outbox, client)
    dispatcher.start()
    try:
        outbox.put([lead()])
        assert outbox.acked.wait(timeout=10)
        # The batch has left the outbox but is not counted yet: a flush is not done.
        assert outbox.counts().unfinished == 0
        assert dispatcher.flush(timeout=0.05) is False
        outbox.go.set()
        assert dispatcher.flush(timeout=10)
        assert dispatcher.counts.sent == 1
    finally:
        outbox.go.set()
        dispatcher.stop(timeout=5)
        client.close()


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


REQUEST_FAULTS = [
    pytest.param(
        FakeGraphAPI.graph_error(
            100, "API calls from the server require an appsecret_proof argument"
        ),
        id="appsecret-proof-missing",
    ),
    pytest.param(
        FakeGraphAPI.graph_error(100, "Invalid appsecret_proof provided in the API argument"),
        id="appsecret-proof-wrong",
    ),
    pytest.param(
        FakeGraphAPI.graph_error(100, "(#100) Invalid parameter"), id="100-names-no-event"
    ),
    pytest.param(FakeGraphAPI.graph_error(100, "Object does not exist", subcode=33), id="pixel"),
    pytest.param(FakeGraphAPI.graph_error(2635, "deprecated version"), id="api-version"),
]


@pytest.mark.parametrize("error", REQUEST_FAULTS)
@pytest.mark.parametrize("size", [1, 40])
def test_a_request_fault_pauses_the_pixel_and_keeps_every_event(
    dispatcher: Dispatcher,
    fake: FakeGraphAPI,
    outbox: RecordingOutbox,
    error: dict[str, object],
    size: int,
) -> None:
    # Not even a batch of one is proof that its event is bad when Meta names no event.
    events = [lead() for _ in range(size)]
    outbox.put(events)
    fake.fail_next(400, error=error)
    drain(dispatcher)
    assert len(fake.requests) == 1  # no halving: one request, then the pixel waits
    assert outbox.counts().dead == 0
    assert outbox.counts().pending == size
    assert dispatcher.paused_pixels == ("111",)
    assert dispatcher.pauses["111"].cause == "request"
    assert dispatcher.counts.dead == 0


def test_a_request_fault_names_the_refused_token_by_its_fingerprint_only(
    dispatcher: Dispatcher, fake: FakeGraphAPI, outbox: RecordingOutbox
) -> None:
    outbox.put([lead()])
    fake.fail_next(400, error=FakeGraphAPI.graph_error(190, "Error validating access token"))
    drain(dispatcher)
    pause = dispatcher.pauses["111"]
    assert (pause.cause, pause.token) == ("token", token_fingerprint(TOKEN))
    assert TOKEN not in repr(dispatcher.pauses)


def test_a_paused_pixels_events_are_released_without_a_pause_delay(
    dispatcher: Dispatcher, fake: FakeGraphAPI, outbox: RecordingOutbox
) -> None:
    outbox.put([lead() for _ in range(3)])
    fake.fail_next(400, error=FakeGraphAPI.graph_error(190, "Error validating access token"))
    drain(dispatcher)
    assert outbox.delays == [0.0]  # the pause is this process's; the outbox holds none
    assert len(outbox.claim(10, lease=60)) == 3  # another sender may take them now


def resolving_dispatcher(
    outbox: RecordingOutbox, fake: FakeGraphAPI, tokens: dict[str, str], **options: Any
) -> Dispatcher:
    client = GraphClient(tokens.get, transport=fake.transport)
    return Dispatcher(outbox, client, flush_interval=0.01, **options)


def test_a_new_token_from_the_resolver_resumes_a_paused_pixel_promptly(
    outbox: RecordingOutbox,
) -> None:
    fake = FakeGraphAPI(access_tokens={"tok-new"})
    tokens = {"111": "tok-refused"}
    dispatcher = resolving_dispatcher(outbox, fake, tokens, token_recheck=0.05)
    events = [lead() for _ in range(5)]
    outbox.put(events)
    dispatcher.start()
    try:
        wait_until(lambda: dispatcher.paused_pixels == ("111",))
        assert dispatcher.pauses["111"].token == token_fingerprint("tok-refused")
        tokens["111"] = "tok-new"  # the customer pasted a new token; the pause is 60 s long
        assert dispatcher.flush(timeout=10)
    finally:
        dispatcher.stop(timeout=5)
    assert sorted(fake.event_ids()) == sorted(e.event_id for e in events)
    assert {e.access_token for e in fake.events} == {"tok-new"}
    assert dispatcher.paused_pixels == ()


def test_a_paused_pixels_resolver_is_not_asked_once_per_loop_spin(
    outbox: RecordingOutbox,
) -> None:
    fake = FakeGraphAPI(access_tokens={"tok-new"})
    asked: list[str] = []

    def resolver(pixel_id: str) -> str:
        asked.append(pixel_id)
        return "tok-refused"

    client = GraphClient(resolver, transport=fake.transport)
    dispatcher = Dispatcher(outbox, client, token_recheck=3600)
    outbox.put([lead()])
    drain(dispatcher)
    assert dispatcher.paused_pixels == ("111",)
    for _ in range(200):
        dispatcher.deliver_next()
    assert asked == ["111"]  # the send's own ask; the next is due in token_recheck seconds
    assert dispatcher.pauses["111"].token == token_fingerprint("tok-refused")  # same token
    assert len(fake.requests) == 1


def test_a_successful_check_lifts_the_pause(make_mirror: MakeMirror, fake: FakeGraphAPI) -> None:
    mirror = make_mirror()
    assert mirror.dispatcher is not None
    fake.fail_next(400, error=FakeGraphAPI.graph_error(190, "Error validating access token"))
    event_id = mirror.send("Lead", action_source="system_generated", user_data={"email": "a@b.c"})
    wait_until(lambda: mirror.stats().paused_pixels == (PIXEL,))
    result = mirror.check(test_event_code="TEST1")
    assert result.ok
    assert mirror.stats().paused_pixels == ()
    assert mirror.flush(timeout=10)
    assert event_id in fake.event_ids()


def test_a_wrong_app_secret_buries_nothing_and_a_fixed_config_sends_it_all(
    make_mirror: MakeMirror, tmp_path: Path
) -> None:
    fake = FakeGraphAPI(access_tokens={TOKEN}, app_secret="the-right-secret")
    outbox = f"sqlite:///{tmp_path / 'outbox.db'}"
    wrong = make_mirror(outbox=outbox, app_secret="a-wrong-secret", transport=fake.transport)
    ids = [
        wrong.send("Lead", action_source="system_generated", user_data={"external_id": f"c{n}"})
        for n in range(60)
    ]
    wait_until(lambda: wrong.stats().paused_pixels == (PIXEL,))
    assert not wrong.flush(timeout=0.3)
    stats = wrong.stats()
    assert (stats.dead, stats.pending + stats.in_flight) == (0, 60)
    assert len(fake.requests) < 5  # one refused request, then the pixel waits
    assert fake.event_ids() == []
    wrong.close(timeout=0.1)

    fixed = make_mirror(outbox=outbox, app_secret="the-right-secret", transport=fake.transport)
    assert fixed.flush(timeout=10)
    assert sorted(fake.event_ids()) == sorted(ids)
    assert fixed.stats().dead == 0


def test_another_process_sends_what_one_process_paused_without_waiting(
    make_mirror: MakeMirror, tmp_path: Path
) -> None:
    fake = FakeGraphAPI(access_tokens={"tok-good"})
    outbox = f"sqlite:///{tmp_path / 'outbox.db'}"
    stale = make_mirror(outbox=outbox, access_token="tok-refused", transport=fake.transport)
    ids = [
        stale.send("Lead", action_source="system_generated", user_data={"external_id": f"c{n}"})
        for n in range(20)
    ]
    wait_until(lambda: stale.stats().paused_pixels == (PIXEL,))
    # The first process is still running, its pause 60 s long; a well-configured one sends.
    fresh = make_mirror(outbox=outbox, access_token="tok-good", transport=fake.transport)
    assert fresh.flush(timeout=10)
    assert sorted(fake.event_ids()) == sorted(ids)
    assert stale.stats().paused_pixels == (PIXEL,)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Retry-After": "100000000"}, id="retry-after-three-years"),
        pytest.param({"Retry-After": str(8 * DAY)}, id="retry-after-past-expiry"),
        pytest.param(
            {
                "X-Business-Use-Case-Usage": json.dumps(
                    {"1": [{"type": "ads_management", "estimated_time_to_regain_access": 10**6}]}
                )
            },
            id="regain-access-in-years",
        ),
    ],
)
def test_a_huge_retry_after_never_parks_an_event_past_its_expiry(
    dispatcher: Dispatcher,
    fake: FakeGraphAPI,
    outbox: RecordingOutbox,
    headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    throttled = FakeGraphAPI.graph_error(80004, "Too many calls")
    fresh, ageing = lead(), lead(event_time=time.time() - 7 * DAY + 2 * EXPIRY_MARGIN)
    for event in (fresh, ageing):
        outbox.put([event])
        fake.fail_next(429, error=throttled, headers=headers)
        before = time.time()
        dispatcher.deliver_next()
        # Due again no later than the moment the expiry check takes it.
        assert 0 <= outbox.delays[-1] <= event.expires_at - EXPIRY_MARGIN - before
    # At that moment, the ageing event is dead-lettered with its reason.
    last_chance = ageing.expires_at - EXPIRY_MARGIN
    monkeypatch.setattr(time, "time", lambda: last_chance)
    _make_due(outbox)
    drain(dispatcher)
    (letter,) = outbox.dead_letters()
    assert letter.event.event_id == ageing.event_id
    assert letter.reason.startswith("expired")
    assert fake.event_ids() == [fresh.event_id]


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
    (record,) = [r for r in caplog.records if "could not renew" in r.getMessage()]
    assert (record.__dict__["pixel"], record.__dict__["destination"]) == ("111", "meta")
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


class RecordingSink:
    """A sink that takes every batch and remembers it."""

    def __init__(self) -> None:
        self.batches: list[tuple[BatchKey, list[bytes]]] = []

    def deliver(self, key: BatchKey, payloads: Sequence[bytes]) -> Delivered:
        self.batches.append((key, list(payloads)))
        return Delivered(len(payloads))

    def fresh_credential(self, pixel_id: str) -> str | None:
        return None

    def close(self) -> None:
        pass


def test_each_batch_goes_to_the_sink_of_its_destination(outbox: RecordingOutbox) -> None:
    meta, audit = RecordingSink(), RecordingSink()
    dispatcher = Dispatcher(outbox, {"meta": meta, "audit": audit})
    to_meta = [lead(), lead()]
    to_audit = [replace(lead(), destination="audit"), replace(lead(), destination="audit")]
    outbox.put([to_meta[0], to_audit[0], to_meta[1], to_audit[1]])

    drain(dispatcher)

    assert [(key, len(batch)) for key, batch in meta.batches] == [(("meta", "111", None), 2)]
    assert [(key, len(batch)) for key, batch in audit.batches] == [(("audit", "111", None), 2)]
    assert audit.batches[0][1] == [event.payload for event in to_audit]
    assert dispatcher.counts.sent == 4


def test_a_destination_without_a_sink_waits_in_the_outbox(outbox: RecordingOutbox) -> None:
    meta = RecordingSink()
    dispatcher = Dispatcher(outbox, meta, retry_backoff=60.0)
    outbox.put([replace(lead(), destination="elsewhere"), lead()])

    drain(dispatcher)

    assert [key.destination for key, _ in meta.batches] == ["meta"]
    assert outbox.counts().pending == 1  # retried later, never dead-lettered
    assert outbox.counts().dead == 0
    assert dispatcher.counts.retried == 1


class RefusingSink(RecordingSink):
    """A sink that refuses its credential ``refused`` and takes batches under any other."""

    def __init__(self, credential: str) -> None:
        super().__init__()
        self.credential = credential
        self.refused = credential

    def deliver(self, key: BatchKey, payloads: Sequence[bytes]) -> Delivered:
        if self.credential == self.refused:
            error = AccessError("credential refused")
            error.token_fingerprint = self.credential
            raise error
        return super().deliver(key, payloads)

    def fresh_credential(self, pixel_id: str) -> str | None:
        return self.credential


def test_a_pause_asks_the_sink_that_refused_for_a_new_credential(
    outbox: RecordingOutbox,
) -> None:
    audit = RefusingSink("old")
    meta = RecordingSink()  # names no credential: it must not be the one asked
    dispatcher = Dispatcher(outbox, {"meta": meta, "audit": audit}, token_recheck=0.0)
    event = replace(lead(), destination="audit")
    outbox.put([event])

    assert dispatcher.deliver_next()
    pause = dispatcher.pauses["111"]
    assert (pause.destination, pause.token) == ("audit", "old")
    assert not dispatcher.deliver_next()  # the same credential: still paused

    audit.credential = "new"
    assert dispatcher.deliver_next()
    assert dispatcher.pauses == {}
    assert audit.batches == [(event.batch_key, [event.payload])]


def lingering_dispatcher(outbox: RecordingOutbox, fake: FakeGraphAPI, **options: Any) -> Dispatcher:
    # An hour-long linger: only a full batch, a flush or a stop can end it within the test.
    client = GraphClient(TOKEN, transport=fake.transport)
    return Dispatcher(outbox, client, linger=3600.0, flush_interval=3600.0, **options)


def test_after_a_short_batch_the_sender_lingers_so_the_next_batch_fills(
    outbox: RecordingOutbox, fake: FakeGraphAPI
) -> None:
    dispatcher = lingering_dispatcher(outbox, fake)
    outbox.put([lead() for _ in range(3)])
    dispatcher.start()
    try:
        wait_until(lambda: len(fake.requests) == 1)  # the first events go out at once
        for _ in range(4):  # events trickle in while the sender lingers
            outbox.put([lead() for _ in range(2)])
        assert dispatcher.flush(timeout=10)  # a flush cuts the linger short
    finally:
        assert dispatcher.stop(timeout=10)
    assert [r.event_count for r in fake.requests] == [3, 8]


def test_a_full_batch_is_followed_at_once_by_the_next(
    outbox: RecordingOutbox, fake: FakeGraphAPI
) -> None:
    dispatcher = lingering_dispatcher(outbox, fake, batch_size=3)
    outbox.put([lead() for _ in range(7)])
    dispatcher.start()
    try:
        wait_until(lambda: len(fake.requests) == 3)  # no flush: only full batches skip the linger
    finally:
        assert dispatcher.stop(timeout=10)  # a stop ends the linger after the short third batch
    assert [r.event_count for r in fake.requests] == [3, 3, 1]


#: The fields every delivery log line carries for a log pipeline (``extra=``).
DELIVERY_FIELDS = ("pixel", "destination", "events", "event_name", "event_id", "error_code")


def test_every_delivery_log_line_carries_its_fields_and_no_doubled_prefix(
    dispatcher: Dispatcher,
    fake: FakeGraphAPI,
    outbox: RecordingOutbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    retried, paused, poisoned = lead("111"), lead("222"), with_raw_email(lead("333"))
    expired = lead("444", event_time=time.time() - 7 * DAY + EXPIRY_MARGIN / 2)
    with caplog.at_level(logging.DEBUG, logger="pixelmirror"):
        outbox.put([retried])
        fake.fail_next(500)
        drain(dispatcher)
        outbox.put([paused])
        fake.fail_next(400, error=FakeGraphAPI.graph_error(190, "Error validating access token"))
        drain(dispatcher)
        dispatcher.resume("222")
        outbox.put([poisoned, expired])
        drain(dispatcher)
    records = {
        kind: [r for r in caplog.records if kind in r.getMessage()]
        for kind in ("will be retried", "PAUSED", "resumed", "dead-lettered event", "too old")
    }
    assert all(len(found) == 1 for found in records.values()), records
    for (record,) in records.values():
        assert record.name == "pixelmirror.delivery"
        assert {name: hasattr(record, name) for name in DELIVERY_FIELDS} == dict.fromkeys(
            DELIVERY_FIELDS, True
        )
        assert record.__dict__["destination"] == "meta"
    fields = {kind: found[0].__dict__ for kind, found in records.items()}
    assert fields["will be retried"]["pixel"] == "111"
    assert fields["will be retried"]["event_id"] == retried.event_id
    assert fields["will be retried"]["event_name"] == "Lead"
    assert fields["PAUSED"]["error_code"] == 190
    assert fields["resumed"]["pixel"] == "222"
    assert fields["dead-lettered event"]["event_id"] == poisoned.event_id
    assert fields["dead-lettered event"]["error_code"] is not None
    assert fields["too old"]["pixel"] == "444"
    assert not [r.getMessage() for r in caplog.records if r.getMessage().startswith("pixelmirror")]

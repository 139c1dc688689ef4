"""What only the Redis outbox promises, against the real server (the contract is in
test_outbox.py): take-over between consumers, parked retries, dead letters, trimming, an
unreachable server, forks, the CLI, and the dispatcher's backoff when the outbox is down.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import pytest
import redis

import redisutil
from conftest import TOKEN, MakeEvent
from pixelmirror import PixelMirror
from pixelmirror.cli import main
from pixelmirror.delivery.dispatcher import ERROR_BACKOFF_MAX, Dispatcher
from pixelmirror.delivery.graph import GraphClient
from pixelmirror.events import MatchSignature, ServerEvent, signature_text
from pixelmirror.outbox import Claimed, OutboxCounts, open_outbox
from pixelmirror.outbox.redis import RedisOutbox
from pixelmirror.outbox.redis_entries import entry_event
from pixelmirror.outbox.redis_options import DEFAULT_GROUP, RedisOptions
from pixelmirror.outbox.redis_scripts import HORIZON, PARKED
from pixelmirror.testing import FakeGraphAPI
from waiting import wait_until

HOUR = 3600.0
OpenRedis = Callable[..., RedisOutbox]


@pytest.fixture
def open_redis(stream: str) -> Iterator[OpenRedis]:
    """Open outboxes on this test's stream, URL options as keywords; closed afterwards."""
    opened: list[RedisOutbox] = []

    def make(**options: object) -> RedisOutbox:
        outbox = RedisOutbox.from_url(redisutil.outbox_url(stream, **options))
        opened.append(outbox)
        return outbox

    yield make
    for outbox in opened:
        outbox.close()


def ids(items: Iterable[Claimed | ServerEvent]) -> list[str]:
    return [(item if isinstance(item, ServerEvent) else item.event).event_id for item in items]


def counts(pending: int = 0, in_flight: int = 0, dead: int = 0, dropped: int = 0) -> OutboxCounts:
    return OutboxCounts(pending=pending, in_flight=in_flight, dead=dead, dropped=dropped)


def owners(server: redis.Redis, stream: str) -> dict[str, str]:
    """Entry id -> consumer, for the group's pending list."""
    pending = server.xpending_range(stream, DEFAULT_GROUP, "-", "+", 10_000)
    return {p["message_id"].decode(): p["consumer"].decode() for p in pending}


# -- the URL --------------------------------------------------------------------------------


def test_url_options_and_defaults() -> None:
    outbox = open_outbox(
        "redis://:s3cret@cache.internal:6380/2?stream=app:ev&group=senders&consumer=w-1"
        "&maxlen=50000&timeout=0.2&lease=30"
    )
    assert isinstance(outbox, RedisOutbox)
    assert outbox.options == RedisOptions("app:ev", "senders", "w-1", 50_000, 0.2, 30.0)
    assert (outbox.stream, outbox.consumer, outbox.lease) == ("app:ev", "w-1", 30.0)
    assert "s3cret" not in outbox.url
    assert outbox.url.startswith("redis://:***@cache.internal:6380/2?")

    default = open_outbox("rediss://cache.internal")  # nothing connects before first use
    assert isinstance(default, RedisOutbox)
    assert default.stream == "pixelmirror:events"
    assert default.consumer == f"{socket.gethostname()}:{os.getpid()}"
    assert default.options == RedisOptions()
    outbox.close()
    default.close()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis:///0", "looks like"),
        ("redis://:s3cret@h/zero", "database must be a number"),
        ("redis://:s3cret@h/0?maxlenn=5", "unknown Redis outbox option"),
        ("redis://h/0?maxlen=0", "maxlen must be positive"),
        ("redis://:s3cret@h/0?maxlen=ten", "maxlen must be an integer"),
        ("redis://h/0?timeout=0", "timeout must be a positive"),
        ("redis://h/0?lease=-1", "lease must be a positive"),
        ("redis://h/0?stream=", "stream name must not be empty"),
    ],
    ids=["no-host", "db", "unknown", "maxlen-0", "maxlen-nan", "timeout", "lease", "stream"],
)
def test_bad_urls_fail_at_construction(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as raised:
        open_outbox(url)
    assert "s3cret" not in str(raised.value)


# -- leases, retries, dead letters ----------------------------------------------------------


def test_a_second_consumer_takes_over_an_expired_lease(
    open_redis: OpenRedis, make_event: MakeEvent, server: redis.Redis, stream: str
) -> None:
    dying, survivor = open_redis(consumer="dying"), open_redis(consumer="survivor")
    dying.put([make_event(event_id=f"e{n}") for n in range(3)])
    stale = dying.claim(10, lease=0)  # its lease is over at once: as if it died
    assert set(owners(server, stream).values()) == {"dying"}

    taken = survivor.claim(10, lease=HOUR)  # XAUTOCLAIM moves them over

    assert ids(taken) == ["e0", "e1", "e2"]
    assert set(owners(server, stream).values()) == {"survivor"}
    dying.ack(stale)
    dying.release(stale, delay=0)
    dying.bury(stale, "too late")
    assert survivor.counts() == counts(in_flight=3)
    survivor.ack(taken)
    assert survivor.counts() == counts()


def test_the_lease_option_overrides_the_lease_a_claim_asks_for(
    open_redis: OpenRedis, make_event: MakeEvent
) -> None:
    dying = open_redis(consumer="dying", lease=0.2)
    survivor = open_redis(consumer="survivor")
    dying.put([make_event(event_id="e")])
    assert ids(dying.claim(10, lease=HOUR)) == ["e"]  # the dispatcher asks for 300 s

    taken: list[Claimed] = []
    wait_until(lambda: taken.extend(survivor.claim(10, lease=HOUR)) or taken)
    assert ids(taken) == ["e"]


def test_renewal_resets_the_idle_clock_and_keeps_the_receipt(
    open_redis: OpenRedis, make_event: MakeEvent, server: redis.Redis, stream: str
) -> None:
    outbox, other = open_redis(consumer="w"), open_redis(consumer="other")
    outbox.put([make_event(event_id="e")])
    (claim,) = outbox.claim(10, lease=0)  # expired at once, not yet taken

    for _ in range(3):
        assert outbox.renew([claim], lease=HOUR) == []

    (entry,) = server.xpending_range(stream, DEFAULT_GROUP, "-", "+", 10)
    assert (entry["consumer"].decode(), entry["times_delivered"]) == ("w", 1)
    lease_left = HORIZON - entry["time_since_delivered"] / 1000  # the idle clock's reading
    assert HOUR - 60 < lease_left <= HOUR
    assert other.claim(10, lease=HOUR) == []
    outbox.ack([claim])  # the receipt still holds
    assert outbox.counts() == counts()


def test_an_entry_another_consumer_holds_is_not_renewed_even_with_the_same_count(
    open_redis: OpenRedis, make_event: MakeEvent, server: redis.Redis, stream: str
) -> None:
    outbox = open_redis(consumer="w")
    outbox.put([make_event(event_id="e")])
    (claim,) = outbox.claim(10, lease=HOUR)
    entry_id = claim.receipt.rpartition(":")[0]
    # A hand-over that keeps the delivery count (a restarted namesake parks what it finds).
    server.xclaim(stream, DEFAULT_GROUP, "elsewhere", 0, [entry_id], justid=True)

    assert outbox.renew([claim], lease=HOUR) == [claim]

    assert owners(server, stream) == {entry_id: "elsewhere"}


def test_a_retry_waits_parked_in_the_pending_list(
    open_redis: OpenRedis, make_event: MakeEvent, server: redis.Redis, stream: str
) -> None:
    outbox = open_redis(consumer="w")
    outbox.put([make_event(event_id="later"), make_event(event_id="soon")])
    later, soon = outbox.claim(10, lease=HOUR)

    outbox.release([later], delay=HOUR)
    outbox.release([soon], delay=0.2)

    # Kept pending (never re-added), owned by the parking consumer until due.
    assert set(owners(server, stream).values()) == {PARKED}
    assert server.xlen(stream) == 2
    assert outbox.counts() == counts(pending=2)
    retried: list[Claimed] = []
    wait_until(lambda: retried.extend(outbox.claim(10, lease=HOUR)) or retried)
    assert ids(retried) == ["soon"]
    assert retried[0].attempts == 1
    assert retried[0].event == soon.event
    assert outbox.claim(10, lease=HOUR) == []  # "later" is not due for an hour


def test_other_batch_keys_go_back_without_an_attempt(
    open_redis: OpenRedis, make_event: MakeEvent
) -> None:
    outbox = open_redis()
    outbox.put([make_event("1", event_id="a"), make_event("2", event_id="b")])
    assert ids(outbox.claim(10, lease=HOUR)) == ["a"]
    (b,) = outbox.claim(10, lease=HOUR)
    assert (b.event.event_id, b.attempts) == ("b", 0)


def test_dead_letters_live_in_their_own_stream_with_the_reason(
    open_redis: OpenRedis, make_event: MakeEvent, server: redis.Redis, stream: str
) -> None:
    outbox = open_redis()
    event = make_event(event_id="bad", test_event_code="TEST1")
    outbox.put([event])
    outbox.release(outbox.claim(1, lease=HOUR), delay=0)
    outbox.bury(outbox.claim(1, lease=HOUR), "Invalid parameter: currency")

    assert server.xlen(stream) == 0
    assert server.hlen(f"{stream}:tries") == 0
    ((_, fields),) = server.xrange(f"{stream}:dead")
    assert fields[b"reason"] == b"Invalid parameter: currency"
    assert fields[b"attempts"] == b"1"
    assert fields[b"event_id"] == b"bad"
    (letter,) = outbox.dead_letters()
    assert letter.event == event
    assert outbox.replay_dead() == 1
    assert server.xlen(f"{stream}:dead") == 0
    assert ids(outbox.claim(1, lease=HOUR)) == ["bad"]


def test_a_foreign_entry_is_dead_lettered_not_handed_round(
    open_redis: OpenRedis, make_event: MakeEvent, server: redis.Redis, stream: str
) -> None:
    outbox = open_redis()
    server.xadd(stream, {"hello": "world"})
    outbox.put([make_event(event_id="ok")])

    assert ids(outbox.claim(10, lease=HOUR)) == ["ok"]
    (letter,) = outbox.dead_letters()
    assert letter.reason == "malformed stream entry: no pixel_id"
    assert outbox.counts() == counts(in_flight=1, dead=1)


def test_an_entry_in_the_0_1_layout_is_metas_not_malformed(
    open_redis: OpenRedis, make_event: MakeEvent, server: redis.Redis, stream: str
) -> None:
    outbox = open_redis()
    old = make_event("7", event_id="old", test_event_code="T1")
    # The fields as pixelmirror 0.1 wrote them: no destination.
    server.xadd(
        stream,
        {
            "pixel_id": old.pixel_id,
            "event_id": old.event_id,
            "event_name": old.event_name,
            "event_time": old.event_time,
            "action_source": old.action_source,
            "payload": old.payload,
            "test_event_code": "T1",
        },
    )
    outbox.put([make_event("7", event_id="other", test_event_code="T1", destination="audit")])
    outbox.put([make_event("7", event_id="new", test_event_code="T1")])

    claimed = outbox.claim(10, lease=HOUR)
    assert ids(claimed) == ["old", "new"]  # one batch: both Meta's
    assert claimed[0].event == old
    assert ids(outbox.claim(10, lease=HOUR)) == ["other"]
    assert outbox.dead_letters() == []


def test_metas_entries_keep_the_0_1_layout(
    open_redis: OpenRedis, make_event: MakeEvent, server: redis.Redis, stream: str
) -> None:
    outbox = open_redis()
    outbox.put([make_event(event_id="m"), make_event(event_id="x", destination="audit")])
    (_, meta), (_, other) = server.xrange(stream)
    assert b"destination" not in meta
    assert other[b"destination"] == b"audit"


def test_a_written_entry_is_what_redis_py_writes_for_the_event_fields(
    open_redis: OpenRedis, server: redis.Redis, stream: str
) -> None:
    # One packed argument per event, unpacked by the script: the same entries as XADD with
    # the fields as arguments, for any text (colons and digits included) and any payload;
    # claims give back the events written, match signatures included, as the entries read.
    rng = random.Random(12)
    alphabet = "0123456789:az_- \u00e9\u4e2d\U0001f600"

    def some_text(empty: bool = False) -> str:
        size = rng.choice([rng.randint(0 if empty else 1, 12), rng.randint(13, 300)])
        return "".join(rng.choice(alphabet) for _ in range(size))

    # Every size of MessagePack string header, at its edges.
    sizes = [0, 31, 32, 255, 256, 65535, 65536, 70_000]

    events = [
        ServerEvent(
            pixel_id=some_text(),
            event_id=some_text(),
            event_name=some_text(),
            event_time=rng.randint(0, 2**40),
            action_source=some_text(),
            payload=rng.randbytes(rng.choice([*sizes, rng.randint(0, 3000)])),
            test_event_code=rng.choice([None, "", some_text()]),
            destination=rng.choice(["meta", "audit", some_text()]),
            match=rng.choice(
                [
                    None,
                    MatchSignature(
                        some_text(),
                        tuple(some_text() for _ in range(rng.randint(0, 3))),
                        tuple(some_text() for _ in range(rng.randint(0, 2))),
                    ),
                ]
            ),
        )
        for _ in range(300)
    ]
    outbox = open_redis()
    outbox.write(events)
    for event in events:
        fields: dict[str, str | int | bytes] = {
            "pixel_id": event.pixel_id,
            "event_id": event.event_id,
            "event_name": event.event_name,
            "event_time": event.event_time,
            "action_source": event.action_source,
            "payload": event.payload,
        }
        if event.test_event_code is not None:
            fields["test_event_code"] = event.test_event_code
        if event.destination != "meta":
            fields["destination"] = event.destination
        if event.match is not None:
            fields["match"] = signature_text(event.match)
        server.xadd(f"{stream}:expected", fields)

    written = [list(entry.items()) for _, entry in server.xrange(stream)]
    expected = [list(entry.items()) for _, entry in server.xrange(f"{stream}:expected")]
    assert written == expected
    entries = {entry_id.decode(): entry_event(entry) for entry_id, entry in server.xrange(stream)}
    claimed = []
    while claims := outbox.claim(1000, lease=HOUR):
        for claim in claims:
            read = entries[claim.receipt.rpartition(":")[0]]
            assert (claim.event, claim.event.match) == (read, read.match)
            claimed.append((claim.event, claim.event.match))
    assert sorted(claimed, key=repr) == sorted(((e, e.match) for e in events), key=repr)


def test_maxlen_trims_the_oldest_and_counts_them_as_dropped(
    open_redis: OpenRedis,
    make_event: MakeEvent,
    server: redis.Redis,
    stream: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = open_redis(maxlen=100)
    events = [make_event(event_id=f"e{n}") for n in range(500)]
    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        for start in range(0, 500, 50):
            assert outbox.put(events[start : start + 50]) == 50  # appended, then trimmed

    kept = server.xlen(stream)
    assert 100 <= kept < 500  # "~": Redis trims whole nodes only
    assert outbox.counts() == counts(pending=kept, dropped=500 - kept)
    assert "oldest entries trimmed" in caplog.text
    assert ids(outbox.claim(1000, lease=HOUR)) == ids(events[500 - kept :])  # newest kept


def test_a_restarted_worker_with_a_stable_name_takes_its_claims_back_at_once(
    open_redis: OpenRedis, make_event: MakeEvent
) -> None:
    killed = open_redis(consumer="worker-1")
    killed.put([make_event(event_id=f"e{n}") for n in range(3)])
    assert len(killed.claim(10, lease=HOUR)) == 3  # then SIGKILL: never answered
    assert open_redis(consumer="worker-2").claim(10, lease=HOUR) == []

    restarted = open_redis(consumer="worker-1")
    assert ids(restarted.claim(10, lease=HOUR)) == ["e0", "e1", "e2"]


def test_a_default_consumer_name_takes_nothing_back(
    open_redis: OpenRedis, make_event: MakeEvent
) -> None:
    first = open_redis()
    first.put([make_event()])
    assert len(first.claim(10, lease=HOUR)) == 1
    second = open_redis()  # same host and pid: the same name, but no previous life
    assert second.consumer == first.consumer
    assert second.claim(10, lease=HOUR) == []


def test_close_removes_a_consumer_only_when_it_holds_nothing(
    open_redis: OpenRedis, make_event: MakeEvent, server: redis.Redis, stream: str
) -> None:
    idle, busy = open_redis(consumer="idle"), open_redis(consumer="busy")
    idle.put([make_event(), make_event()])
    idle.ack(idle.claim(1, lease=HOUR))
    busy.claim(1, lease=HOUR)
    idle.close()
    busy.close()
    consumers = server.xinfo_consumers(stream, DEFAULT_GROUP)
    assert [c["name"] for c in consumers] == [b"busy"]


def test_a_deleted_stream_and_group_are_made_again(
    open_redis: OpenRedis, make_event: MakeEvent, server: redis.Redis, stream: str
) -> None:
    outbox = open_redis()
    outbox.put([make_event(event_id="first")])
    outbox.ack(outbox.claim(10, lease=HOUR))
    server.delete(stream)  # someone ran DEL (or FLUSHDB): the group went with it
    outbox.put([make_event(event_id="second")])
    assert ids(outbox.claim(10, lease=HOUR)) == ["second"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_connections_and_name(
    open_redis: OpenRedis, make_event: MakeEvent
) -> None:
    outbox = open_redis(consumer="web")
    outbox.put([make_event(event_id="parent")])
    (held,) = outbox.claim(10, lease=HOUR)  # the parent holds this one
    inherited = outbox._put_redis

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            fresh = outbox.put([make_event(event_id="child")]) == 1
            claimed = outbox.claim(10, lease=HOUR)  # must not take the parent's claim back
            outbox.ack(claimed)
            if (
                fresh
                and ids(claimed) == ["child"]
                and outbox._put_redis is not inherited
                and outbox.consumer == f"web:{os.getpid()}"
            ):
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert outbox._put_redis is inherited
    assert outbox.consumer == "web"
    assert outbox.counts() == counts(in_flight=1)
    outbox.ack([held])
    assert outbox.counts() == counts()


# -- an unreachable Redis -------------------------------------------------------------------


def test_put_to_an_unreachable_redis_drops_fast_and_never_raises(
    make_event: MakeEvent, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = RedisOutbox.from_url("redis://127.0.0.1:1/0")  # nothing listens on port 1
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        assert outbox.put([make_event(), make_event()]) == 0
        assert outbox.put([make_event()]) == 0  # within the cooldown: not even tried
    assert time.monotonic() - started < 2.0
    assert outbox._drops.total == 3
    assert "ConnectionError" in caplog.text
    assert "unreachable less than 1s ago" in caplog.text
    with pytest.raises(redis.ConnectionError):
        outbox.claim(10, lease=HOUR)  # the worker side raises; the dispatcher backs off
    outbox.close()


def test_put_to_a_redis_that_never_answers_waits_one_timeout(make_event: MakeEvent) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never replies
        port = silent.getsockname()[1]
        outbox = RedisOutbox.from_url(f"redis://127.0.0.1:{port}/0?timeout=0.2")
        started = time.monotonic()
        assert outbox.put([make_event()]) == 0
        assert time.monotonic() - started < 2.0  # one 0.2 s timeout, plus scheduling
        assert outbox._drops.total == 1
        outbox.close()


# -- the dispatcher's lease renewal ----------------------------------------------------------


def test_a_dispatcher_renews_within_the_lease_the_url_gives(open_redis: OpenRedis) -> None:
    slow = open_redis(consumer="slow", lease=0.6)  # every claim's lease, whatever is asked
    rival = open_redis(consumer="rival")
    event = ServerEvent.create(
        "Lead", pixel_id="1", action_source="system_generated", user_data={"external_id": "c"}
    )
    slow.put([event])
    fake = FakeGraphAPI(access_tokens={TOKEN}, latency=2.0)  # three leases long
    client = GraphClient(TOKEN, transport=fake.transport)
    dispatcher = Dispatcher(slow, client, lease=HOUR)
    sender = threading.Thread(target=dispatcher.deliver_next)
    sender.start()
    wait_until(lambda: slow.counts().in_flight == 1)

    taken: list[Claimed] = []
    while sender.is_alive():  # the rival polls all along the slow request
        taken += rival.claim(10, lease=HOUR)
        time.sleep(0.01)
    client.close()

    assert taken == []
    assert fake.event_ids() == [event.event_id]
    assert slow.counts() == counts()


# -- the dispatcher when the outbox is down -------------------------------------------------


def test_the_dispatcher_backs_off_while_the_outbox_is_unreachable(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = RedisOutbox.from_url("redis://127.0.0.1:1/0")
    client = GraphClient(TOKEN, transport=FakeGraphAPI().transport)
    dispatcher = Dispatcher(outbox, client, flush_interval=0.01)
    streaks: list[int] = []
    backoff = dispatcher._error_backoff

    def recording(failures: int) -> float:
        streaks.append(failures)
        return backoff(failures)

    monkeypatch.setattr(dispatcher, "_error_backoff", recording)
    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        dispatcher.start()
        wait_until(lambda: len(streaks) >= 4)
        assert dispatcher.stop(timeout=5)
    assert streaks == list(range(1, len(streaks) + 1))  # each failure lengthens the wait
    assert "dispatcher failed (4 in a row)" in caplog.text
    assert "Connection refused" in caplog.text
    client.close()
    outbox.close()


def test_error_backoff_doubles_up_to_its_ceiling_and_stop_cuts_it_short() -> None:
    outbox = RedisOutbox.from_url("redis://127.0.0.1:1/0")
    client = GraphClient(TOKEN, transport=FakeGraphAPI().transport)
    dispatcher = Dispatcher(outbox, client, flush_interval=1.0)
    assert [dispatcher._error_backoff(n) <= 2.0 ** (n - 1) for n in (1, 2, 3)] == [True] * 3
    assert all(dispatcher._error_backoff(n) <= ERROR_BACKOFF_MAX for n in range(1, 40))
    assert dispatcher._error_backoff(40) >= ERROR_BACKOFF_MAX / 2

    dispatcher.start()  # fails at once, then waits up to a second before the next try
    assert dispatcher.stop(timeout=0.5)  # the wait ends with stop()
    client.close()
    outbox.close()


# -- through PixelMirror and the CLI --------------------------------------------------------


def test_a_mirror_sends_through_redis(stream: str) -> None:
    fake = FakeGraphAPI(access_tokens={TOKEN}, failure_rate=0.3, seed=3)
    mirror = PixelMirror(
        pixel_id="1234567890",
        access_token=TOKEN,
        secret_key="s3cret-signing-key-for-tests",
        outbox=redisutil.outbox_url(stream),
        transport=fake.transport,
        flush_interval=0.02,
        retry_backoff=0.001,
        retry_backoff_max=0.01,
    )
    sent = {
        mirror.send("Lead", action_source="system_generated", user_data={"external_id": str(n)})
        for n in range(200)
    }
    assert mirror.flush(timeout=30)
    stats = mirror.stats()
    mirror.close(timeout=1)
    assert collections.Counter(fake.event_ids()) == collections.Counter(sent)
    assert (stats.queued, stats.sent, stats.pending, stats.in_flight) == (200, 200, 0, 0)
    assert stats.retried > 0


def test_cli_outbox_stats_and_replay_dead(
    open_redis: OpenRedis,
    make_event: MakeEvent,
    stream: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = redisutil.outbox_url(stream)
    monkeypatch.setenv("PIXELMIRROR_OUTBOX", url)
    outbox = open_redis()
    outbox.put([make_event(event_id="ok"), make_event(event_id="bad")])
    ok, bad = outbox.claim(10, lease=HOUR)
    outbox.release([ok], delay=0, failed=False)
    outbox.bury([bad], "rejected by Meta: test")

    assert main(["outbox", "stats", "--dead", "5"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["outbox"] == url
    assert (stats["pending"], stats["in_flight"], stats["dead"]) == (1, 0, 1)
    assert stats["dead_letters"][0]["reason"] == "rejected by Meta: test"
    assert stats["dead_letters"][0]["event_id"] == "bad"

    assert main(["outbox", "replay-dead"]) == 0
    assert json.loads(capsys.readouterr().out)["replayed"] == 1
    assert main(["outbox", "stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["pending"], stats["dead"]) == (2, 0)


def test_threads_of_two_outboxes_share_the_work(
    open_redis: OpenRedis, make_event: MakeEvent
) -> None:
    """Two "processes" (outboxes with their own connections), two threads each."""
    outboxes = [open_redis(consumer="a"), open_redis(consumer="b")]
    expected = {f"e{n}" for n in range(1000)}
    outboxes[0].put([make_event(event_id=event_id) for event_id in sorted(expected)])
    seen: list[list[str]] = [[] for _ in range(4)]

    def drain(outbox: RedisOutbox, mine: list[str]) -> None:
        while batch := outbox.claim(25, lease=HOUR):
            mine.extend(ids(batch))
            failing = [claim for claim in batch if claim.attempts == 0][:1]
            outbox.release(failing, delay=0)  # one event of each batch fails, once
            outbox.ack([claim for claim in batch if claim not in failing])

    threads = [
        threading.Thread(target=drain, args=(outboxes[n % 2], mine)) for n, mine in enumerate(seen)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    everything = collections.Counter(event_id for mine in seen for event_id in mine)
    assert set(everything) == expected
    assert outboxes[0].counts() == counts()

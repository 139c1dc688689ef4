"""The outbox contract, run against every backend, then what only SQLite promises.

A new backend joins the contract suite with one entry in ``BACKENDS``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import redisutil
from pixelmirror.delivery.tally import MatchQuality
from pixelmirror.events import ServerEvent
from pixelmirror.outbox import Claimed, MemoryOutbox, Outbox, OutboxCounts, open_outbox
from pixelmirror.outbox import redis as redis_outbox
from pixelmirror.outbox import sqlite as sqlite_outbox
from pixelmirror.outbox.base import DeadLetter, dead_letter_matches
from pixelmirror.outbox.sqlite import SQLiteOutbox
from pixelmirror.outbox.sqlite_connection import PAGE_SIZE

MakeEvent = Callable[..., ServerEvent]
OutboxFactory = Callable[..., Outbox]
HOUR = 3600.0

SRC = Path(__file__).resolve().parents[1] / "src"


def _memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_events: int | None) -> Outbox:
    return MemoryOutbox() if max_events is None else MemoryOutbox(max_events=max_events)


def _sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_events: int | None) -> Outbox:
    return SQLiteOutbox(tmp_path / "outbox.db", max_events=max_events)


def _redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_events: int | None) -> Outbox:
    redisutil.redis_client().close()  # skips, or fails in CI, without a server
    if max_events is not None:
        pytest.skip("a Redis outbox caps by trimming its oldest entries: test_redis_outbox.py")
    return open_outbox(redisutil.outbox_url(redisutil.fresh_stream()))


BACKENDS: dict[str, Callable[[Path, pytest.MonkeyPatch, int | None], Outbox]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def outbox_factory(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OutboxFactory]:
    opened: list[Outbox] = []

    def make(*, max_events: int | None = None) -> Outbox:
        outbox = BACKENDS[backend](tmp_path, monkeypatch, max_events)
        opened.append(outbox)
        return outbox

    yield make
    for outbox in opened:
        outbox.close()
        redisutil.cleanup(outbox)


@pytest.fixture
def outbox(outbox_factory: OutboxFactory) -> Outbox:
    return outbox_factory()


def ids(items: Iterable[Claimed | ServerEvent]) -> list[str]:
    return [(item if isinstance(item, ServerEvent) else item.event).event_id for item in items]


def counts(pending: int = 0, in_flight: int = 0, dead: int = 0, dropped: int = 0) -> OutboxCounts:
    return OutboxCounts(pending=pending, in_flight=in_flight, dead=dead, dropped=dropped)


# -- the contract ---------------------------------------------------------------------------


def test_claim_returns_events_unchanged_in_put_order(outbox: Outbox, make_event: MakeEvent) -> None:
    first = make_event(payload='{"name": "Zoë"}'.encode(), test_event_code=None)
    rest = [make_event(), make_event()]
    assert outbox.put([first]) == 1
    assert outbox.put(rest) == 2

    claims = outbox.claim(10, lease=HOUR)

    assert [claim.event for claim in claims] == [first, *rest]
    assert [claim.attempts for claim in claims] == [0, 0, 0]
    assert len({claim.receipt for claim in claims}) == 3
    assert outbox.claim(10, lease=HOUR) == []


def _made_events(rng: random.Random, count: int) -> list[ServerEvent]:
    """Events of one pixel as create makes them: random names (any text), sources, user data
    and URLs, so their match signatures vary."""
    contact = {
        "em": "ann@example.com",
        "ph": "+4915112345678",
        "fn": "Ann",
        "client_ip_address": "203.0.113.9",
        "fbc": "fb.1.1700000000000.IwAR2abc",
        "fbp": "fb.1.1700000000000.123",
    }
    names = ["Purchase", "Lead", "PageView", 'Say "hi", \\o/', "Zoë ✓ 中", "a|b\tc", "[1]"]
    events = []
    for _ in range(count):
        source = rng.choice(["website", "app", "system_generated"])
        user_data = {key: value for key, value in contact.items() if rng.random() < 0.5}
        user_data["external_id"] = "c-1"
        url = rng.choice(["https://shop.example/", "https://shop.example/?fbclid=IwAR2", None])
        if source == "website":
            user_data["client_user_agent"] = "Mozilla/5.0 (X11)"
            url = url or "https://shop.example/p"
        events.append(
            ServerEvent.create(
                rng.choice(names),
                pixel_id="1",
                action_source=source,
                user_data=user_data,
                custom_data={"currency": "EUR", "value": 1},
                event_source_url=url,
            )
        )
    return events


def test_a_claimed_event_carries_the_match_signature_it_was_made_with(outbox: Outbox) -> None:
    events = _made_events(random.Random(7), 300)
    outbox.put(events)

    claims = outbox.claim(1000, lease=HOUR)

    assert [claim.event for claim in claims] == events
    assert all(event.match is not None for event in events)
    assert [claim.event.match for claim in claims] == [event.match for event in events]


def test_an_event_stored_without_its_match_signature_is_counted_from_its_payload(
    outbox: Outbox,
) -> None:
    # As older versions stored them: SQLite rows with no signature, Redis entries without
    # the field.
    events = _made_events(random.Random(8), 200)
    outbox.put([replace(event, match=None) for event in events])

    claims = outbox.claim(1000, lease=HOUR)

    assert [claim.event.match for claim in claims] == [None] * len(events)
    stored, made = MatchQuality(), MatchQuality()
    stored.count("1", [claim.event for claim in claims])
    made.count("1", events)
    assert stored.counts() == made.counts()


def test_put_of_nothing_takes_nothing(outbox: Outbox) -> None:
    assert outbox.put([]) == 0
    assert outbox.counts() == counts()


def test_a_claim_holds_one_pixel_and_one_test_code(outbox: Outbox, make_event: MakeEvent) -> None:
    events = [
        make_event("1", event_id="a1"),
        make_event("2", event_id="b1"),
        make_event("1", event_id="a2"),
        make_event("1", "TEST42", event_id="t1"),
        make_event("1", event_id="a3"),
    ]
    outbox.put(events)

    assert ids(outbox.claim(10, lease=HOUR)) == ["a1", "a2", "a3"]  # oldest batch key first
    assert ids(outbox.claim(10, lease=HOUR)) == ["b1"]
    test_batch = outbox.claim(10, lease=HOUR)
    assert ids(test_batch) == ["t1"]
    assert test_batch[0].event.test_event_code == "TEST42"
    assert outbox.claim(10, lease=HOUR) == []


def test_a_claim_holds_one_destination(outbox: Outbox, make_event: MakeEvent) -> None:
    outbox.put(
        [
            make_event("1", event_id="m1"),
            make_event("1", event_id="x1", destination="audit"),
            make_event("1", event_id="m2"),
            make_event("1", event_id="x2", destination="audit"),
        ]
    )

    meta = outbox.claim(10, lease=HOUR)
    assert ids(meta) == ["m1", "m2"]
    assert {claim.event.destination for claim in meta} == {"meta"}
    audit = outbox.claim(10, lease=HOUR)
    assert ids(audit) == ["x1", "x2"]
    assert {claim.event.batch_key for claim in audit} == {("audit", "1", None)}
    outbox.bury(audit[:1], "refused")
    assert [letter.event.destination for letter in outbox.dead_letters()] == ["audit"]
    assert outbox.replay_dead() == 1
    assert [claim.event.destination for claim in outbox.claim(10, lease=HOUR)] == ["audit"]


def test_claim_takes_at_most_limit(outbox: Outbox, make_event: MakeEvent) -> None:
    outbox.put([make_event(event_id=f"e{n}") for n in range(5)])

    assert outbox.claim(0, lease=HOUR) == []
    assert ids(outbox.claim(2, lease=HOUR)) == ["e0", "e1"]
    assert ids(outbox.claim(2, lease=HOUR)) == ["e2", "e3"]
    assert ids(outbox.claim(2, lease=HOUR)) == ["e4"]


def test_claim_never_takes_a_skipped_pixel(outbox: Outbox, make_event: MakeEvent) -> None:
    outbox.put([make_event("1", event_id="a"), make_event("2", event_id="b")])

    assert ids(outbox.claim(10, lease=HOUR, skip_pixels={"1"})) == ["b"]
    assert outbox.claim(10, lease=HOUR, skip_pixels=["1", "3"]) == []
    assert ids(outbox.claim(10, lease=HOUR)) == ["a"]


def test_ack_forgets(outbox: Outbox, make_event: MakeEvent) -> None:
    outbox.put([make_event(), make_event()])
    claims = outbox.claim(10, lease=HOUR)

    outbox.ack(claims[:1])
    assert outbox.counts() == counts(in_flight=1)
    outbox.ack(claims)  # acking twice is harmless
    assert outbox.counts() == counts()
    assert outbox.claim(10, lease=0) == []


def test_one_ack_answers_many_claims_and_ignores_stale_receipts(
    outbox: Outbox, make_event: MakeEvent
) -> None:
    # More events than one statement's ids, under two claims, with stale receipts among them.
    outbox.put([make_event() for _ in range(1300)])
    first = outbox.claim(700, lease=0)
    taken_over = outbox.claim(1300, lease=HOUR)  # the first claim's leases ran out
    assert len(set(ids(taken_over))) == 1300
    assert set(ids(first)) < set(ids(taken_over))

    outbox.ack([*first, *taken_over[:-1]])

    assert outbox.counts() == counts(in_flight=1)
    outbox.ack(taken_over[-1:])
    assert outbox.counts() == counts()


def test_release_makes_events_claimable_after_the_delay(
    outbox: Outbox, make_event: MakeEvent
) -> None:
    outbox.put([make_event(event_id="soon"), make_event(event_id="later")])
    soon, later = outbox.claim(10, lease=HOUR)

    outbox.release([soon], delay=0)
    outbox.release([later], delay=HOUR)

    assert outbox.counts() == counts(pending=2)
    assert ids(outbox.claim(10, lease=HOUR)) == ["soon"]
    assert outbox.claim(10, lease=HOUR) == []
    assert outbox.counts() == counts(pending=1, in_flight=1)


def test_failed_attempts_are_counted(outbox: Outbox, make_event: MakeEvent) -> None:
    event = make_event()
    outbox.put([event])

    attempts = []
    for failed in (True, False, True):
        (claim,) = outbox.claim(1, lease=HOUR)
        assert claim.event == event  # same event_id, event_time and bytes on every retry
        attempts.append(claim.attempts)
        outbox.release([claim], delay=0, failed=failed)
    attempts.append(outbox.claim(1, lease=HOUR)[0].attempts)

    assert attempts == [0, 1, 1, 2]


def test_an_expired_lease_is_claimed_again_and_the_stale_receipt_changes_nothing(
    outbox: Outbox, make_event: MakeEvent
) -> None:
    outbox.put([make_event(event_id="e")])
    (stale,) = outbox.claim(10, lease=0)  # this sender "dies": its lease is already over

    (fresh,) = outbox.claim(10, lease=HOUR)
    assert fresh.event == stale.event
    assert fresh.receipt != stale.receipt

    outbox.ack([stale])
    outbox.release([stale], delay=0)
    outbox.bury([stale], "too late")
    assert outbox.counts() == counts(in_flight=1)
    assert outbox.claim(10, lease=HOUR) == []

    outbox.ack([fresh])
    assert outbox.counts() == counts()


def test_a_renewed_claim_outlasts_its_first_lease(outbox: Outbox, make_event: MakeEvent) -> None:
    outbox.put([make_event(event_id="e0"), make_event(event_id="e1")])
    claims = outbox.claim(10, lease=0)  # the first lease is over at once

    assert outbox.renew(claims, lease=HOUR) == []

    assert outbox.claim(10, lease=HOUR) == []  # nobody else may take them
    assert outbox.counts() == counts(in_flight=2)
    outbox.ack(claims)  # the receipts still answer for them
    assert outbox.counts() == counts()


def test_renewal_shortens_a_lease_too(outbox: Outbox, make_event: MakeEvent) -> None:
    outbox.put([make_event(event_id="e")])
    claims = outbox.claim(10, lease=HOUR)

    assert outbox.renew(claims, lease=0) == []

    assert ids(outbox.claim(10, lease=HOUR)) == ["e"]


def test_a_claim_taken_over_is_not_renewed_nor_taken_back(
    outbox: Outbox, make_event: MakeEvent
) -> None:
    outbox.put([make_event(event_id="lost"), make_event(event_id="kept")])
    lost, kept = outbox.claim(10, lease=0)  # this sender stalls past its lease
    outbox.renew([kept], lease=HOUR)  # ...but renews one claim before anyone takes it
    (taken,) = outbox.claim(10, lease=0)  # another sender takes over the other one
    assert taken.event == lost.event

    assert outbox.renew([lost, kept], lease=HOUR) == [lost]

    # Still the taker's, with its lease untouched (over at once): a third sender gets it.
    (again,) = outbox.claim(10, lease=HOUR)
    assert again.event == lost.event
    assert outbox.renew([taken], lease=HOUR) == [taken]
    outbox.ack([lost, taken])  # stale receipts change nothing
    assert outbox.counts() == counts(in_flight=2)
    outbox.ack([again, kept])
    assert outbox.counts() == counts()


@pytest.mark.parametrize("answer", ["ack", "release", "bury"])
def test_an_answered_claim_is_not_renewed(
    outbox: Outbox, make_event: MakeEvent, answer: str
) -> None:
    outbox.put([make_event(event_id="e")])
    claims = outbox.claim(10, lease=HOUR)
    if answer == "ack":
        outbox.ack(claims)
    elif answer == "release":
        outbox.release(claims, delay=HOUR)
    else:
        outbox.bury(claims, "rejected")
    before = outbox.counts()

    assert outbox.renew(claims, lease=HOUR) == claims

    assert outbox.counts() == before
    assert outbox.claim(10, lease=HOUR) == []
    assert outbox.renew([], lease=HOUR) == []


def test_expired_leases_come_back_in_order(outbox: Outbox, make_event: MakeEvent) -> None:
    outbox.put([make_event(event_id=f"e{n}") for n in range(3)])
    outbox.claim(10, lease=0)

    assert ids(outbox.claim(10, lease=HOUR)) == ["e0", "e1", "e2"]


def test_bury_keeps_dead_letters_and_replay_brings_them_back(
    outbox: Outbox, make_event: MakeEvent
) -> None:
    outbox.put([make_event(event_id=f"e{n}") for n in range(3)])
    first = outbox.claim(10, lease=HOUR)
    outbox.release(first[:1], delay=0)  # one failed attempt before it dies
    e1, e2 = first[1:]
    (e0,) = outbox.claim(10, lease=HOUR)
    assert e0.attempts == 1

    before = time.time()
    outbox.bury([e0], "bad value")
    outbox.bury([e1], "bad currency")
    after = time.time()

    assert outbox.counts() == counts(in_flight=1, dead=2)
    letters = outbox.dead_letters()
    assert [(letter.event.event_id, letter.reason) for letter in letters] == [
        ("e1", "bad currency"),
        ("e0", "bad value"),
    ]  # newest first
    assert letters[1].event == e0.event
    assert all(before <= letter.died_at <= after for letter in letters)
    assert ids([letter.event for letter in outbox.dead_letters(limit=1)]) == ["e1"]

    assert outbox.replay_dead() == 2
    assert outbox.dead_letters() == []
    assert outbox.counts() == counts(pending=2, in_flight=1)
    replayed = outbox.claim(10, lease=HOUR)
    assert ids(replayed) == ["e0", "e1"]
    assert [claim.attempts for claim in replayed] == [0, 0]  # a replay starts afresh
    outbox.ack([*replayed, e2])
    assert outbox.counts() == counts()


def test_replay_with_no_dead_letters(outbox: Outbox) -> None:
    assert outbox.dead_letters() == []
    assert outbox.replay_dead() == 0


def bury_letters(outbox: Outbox, letters: Iterable[tuple[ServerEvent, str]]) -> None:
    """Bury each event with its reason, in order."""
    for event, reason in letters:
        outbox.put([event])
        (claim,) = outbox.claim(1, lease=HOUR)
        outbox.bury([claim], reason)


def test_replay_by_pixel_moves_only_that_pixels_letters(
    outbox: Outbox, make_event: MakeEvent
) -> None:
    bury_letters(
        outbox,
        [
            (make_event(pixel_id=pixel, event_id=f"{pixel}-{n}"), "rejected")
            for n in range(2)
            for pixel in ("1", "2")
        ],
    )

    assert outbox.dead_count(pixel_id="2") == 2
    assert outbox.replay_dead(pixel_id="2") == 2

    assert ids(outbox.claim(10, lease=HOUR)) == ["2-0", "2-1"]
    assert sorted(ids(letter.event for letter in outbox.dead_letters())) == ["1-0", "1-1"]
    assert outbox.dead_count(pixel_id="2") == 0
    assert outbox.dead_count(pixel_id="9") == 0
    assert outbox.replay_dead(pixel_id="9") == 0
    assert outbox.dead_count() == 2


REASONS = [
    "Invalid parameter: value must be 100% positive",
    "invalid PARAMETER: currency_code",
    "rejected: bad value",
    "Rejected: 50% off_season",
    "token expired",
]


@pytest.mark.parametrize(
    ("text", "chosen"),
    [
        ("invalid parameter", [0, 1]),  # any case
        ("REJECTED", [2, 3]),
        ("100%", [0]),  # % is a literal percent sign, not a wildcard
        ("%", [0, 3]),
        ("_", [1, 3]),  # _ is a literal underscore, not any one character
        ("d: 5", [3]),
        ("0% o", [3]),
        ("y_c", [1]),
        ("e_o", []),  # would match "e o"-like text were _ a wildcard
        ("\\", []),  # the escape character is literal too
        ("", [0, 1, 2, 3, 4]),
        ("nowhere", []),
    ],
)
def test_replay_by_reason_substring_is_case_insensitive_and_literal(
    outbox: Outbox, make_event: MakeEvent, text: str, chosen: list[int]
) -> None:
    bury_letters(outbox, [(make_event(event_id=f"r{n}"), why) for n, why in enumerate(REASONS)])
    expected = [f"r{n}" for n in chosen]
    assert [REASONS[n] for n in chosen] == [
        why
        for why in REASONS
        if dead_letter_matches(DeadLetter(make_event(), why, 0.0), reason=text)
    ]

    assert outbox.dead_count(reason=text) == len(expected)
    assert outbox.replay_dead(reason=text) == len(expected)

    assert ids(outbox.claim(10, lease=HOUR)) == expected
    assert outbox.dead_count() == len(REASONS) - len(expected)


def test_every_outbox_picks_the_letters_the_reason_match_defines(
    outbox: Outbox, make_event: MakeEvent
) -> None:
    # Wildcards, the escape character and letters ASCII or not, in both cases.
    reasons = ["a%b", "A_b", "ab", "a\\b", "%", "_", "\\", "É%", "é_a", "x y", "AB_%"]
    bury_letters(outbox, [(make_event(), why) for why in reasons])

    @settings(max_examples=60, deadline=None)
    @given(st.text(alphabet="aAbB%_\\ éÉ", max_size=3))
    def same_count(text: str) -> None:
        expected = sum(
            dead_letter_matches(DeadLetter(make_event(), why, 0.0), reason=text) for why in reasons
        )
        assert outbox.dead_count(reason=text) == expected

    same_count()


def test_replay_by_pixel_and_reason_moves_letters_matching_both(
    outbox: Outbox, make_event: MakeEvent
) -> None:
    bury_letters(
        outbox,
        [
            (make_event(pixel_id="1", event_id="1-bad"), "bad value"),
            (make_event(pixel_id="1", event_id="1-ok"), "token expired"),
            (make_event(pixel_id="2", event_id="2-bad"), "Bad Value"),
        ],
    )

    assert outbox.dead_count(pixel_id="1", reason="BAD") == 1
    assert outbox.replay_dead(pixel_id="1", reason="BAD") == 1

    assert ids(outbox.claim(10, lease=HOUR)) == ["1-bad"]
    assert sorted(ids(letter.event for letter in outbox.dead_letters())) == ["1-ok", "2-bad"]


def test_replay_reports_progress_rising_to_the_total(
    outbox: Outbox, make_event: MakeEvent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of two, so the durable outboxes report more than once.
    monkeypatch.setattr(sqlite_outbox, "REPLAY_CHUNK", 2)
    monkeypatch.setattr(redis_outbox, "_REPLAY_CHUNK", 2)
    bury_letters(
        outbox, [(make_event(pixel_id=str(n % 2), event_id=f"e{n}"), "rejected") for n in range(7)]
    )
    seen: list[int] = []

    assert outbox.replay_dead(pixel_id="0", progress=seen.append) == 4

    assert seen == sorted(set(seen))
    assert seen[-1] == 4
    if outbox.durable:
        assert len(seen) > 1
    assert outbox.dead_count() == 3
    assert outbox.replay_dead(pixel_id="0", progress=seen.append) == 0
    assert seen[-1] == 4  # nothing moved, nothing reported


def test_unfiltered_replay_moves_every_letter_in_order(
    outbox: Outbox, make_event: MakeEvent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_outbox, "REPLAY_CHUNK", 2)
    monkeypatch.setattr(redis_outbox, "_REPLAY_CHUNK", 2)
    events = [make_event(pixel_id=str(n % 3), event_id=f"e{n}") for n in range(5)]
    bury_letters(outbox, [(event, f"reason {n}") for n, event in enumerate(events)])

    assert outbox.dead_count() == 5
    assert outbox.replay_dead() == 5

    assert outbox.dead_count() == 0
    assert outbox.counts() == counts(pending=5)
    claimed = [claim.event for pixel in "012" for claim in outbox.claim(10, lease=HOUR)]
    assert sorted(claimed, key=lambda event: event.event_id) == events


def test_counts_at_each_step(outbox: Outbox, make_event: MakeEvent) -> None:
    assert outbox.counts() == counts()
    outbox.put([make_event() for _ in range(4)])
    assert outbox.counts() == counts(pending=4)
    claims = outbox.claim(3, lease=HOUR)
    assert outbox.counts() == counts(pending=1, in_flight=3)
    outbox.ack(claims[:1])
    assert outbox.counts() == counts(pending=1, in_flight=2)
    outbox.release(claims[1:2], delay=HOUR)
    assert outbox.counts() == counts(pending=2, in_flight=1)
    outbox.bury(claims[2:], "rejected")
    assert outbox.counts() == counts(pending=2, dead=1)
    assert counts(pending=2, in_flight=1).unfinished == 3


def test_a_full_outbox_drops_and_counts(
    outbox_factory: OutboxFactory, make_event: MakeEvent, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = outbox_factory(max_events=2)

    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        assert outbox.put([make_event(event_id=f"e{n}") for n in range(3)]) == 2

    assert outbox.counts() == counts(pending=2, dropped=1)
    assert "dropped 1 event" in caplog.text
    outbox.ack(outbox.claim(1, lease=HOUR))
    assert outbox.put([make_event(event_id="e3"), make_event(event_id="e4")]) == 1
    assert outbox.counts() == counts(pending=2, dropped=2)
    assert ids(outbox.claim(10, lease=HOUR)) == ["e1", "e3"]


def test_threads_claim_disjoint_batches(outbox: Outbox, make_event: MakeEvent) -> None:
    expected = {f"e{n}" for n in range(400)}
    outbox.put([make_event(event_id=event_id) for event_id in sorted(expected)])
    seen: list[list[str]] = [[] for _ in range(4)]

    def drain(mine: list[str]) -> None:
        while batch := outbox.claim(7, lease=HOUR):
            mine.extend(ids(batch))
            outbox.ack(batch)

    threads = [threading.Thread(target=drain, args=(mine,)) for mine in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    everything = [event_id for mine in seen for event_id in mine]
    assert len(everything) == len(set(everything)) == len(expected)
    assert set(everything) == expected
    assert outbox.counts() == counts()


def test_close_twice(outbox: Outbox) -> None:
    outbox.close()
    outbox.close()


# -- SQLite only ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "durable"),
    [("memory://", False), ("sqlite:///{tmp}/o.db", True), ("redis://127.0.0.1:6379/0", True)],
)
def test_each_registered_scheme_opens_an_outbox_that_says_if_it_is_durable(
    url: str, durable: bool, tmp_path: Path
) -> None:
    outbox = open_outbox(url.format(tmp=tmp_path))  # Redis connects on first use only
    assert outbox.durable is durable
    outbox.close()


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    relative = open_outbox("sqlite:///data/rel.db")
    assert isinstance(relative, SQLiteOutbox)
    assert relative.url == "sqlite:///data/rel.db"
    assert (tmp_path / "data" / "rel.db").exists()
    relative.close()

    absolute = SQLiteOutbox.from_url(
        f"sqlite:///{tmp_path}/abs.db?synchronous=full&max_events=10&timeout=0.5"
    )
    assert str(tmp_path).startswith("/")
    assert absolute.path == f"{tmp_path}/abs.db"
    assert (absolute.max_events, absolute.timeout) == (10, 0.5)
    conn = absolute._db.conn
    assert conn is not None
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    absolute.close()

    default = SQLiteOutbox(tmp_path / "default.db")
    assert default.url == f"sqlite:///{tmp_path}/default.db"
    assert default._db.conn is not None
    assert default._db.conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    default.close()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("sqlite://host/x.db", "looks like"),
        ("sqlite:///", "names no file"),
        ("sqlite:///x.db?max_evnts=5", "unknown SQLite outbox option"),
        ("sqlite:///x.db?synchronous=off", "synchronous"),
        ("sqlite:///x.db?max_events=ten", "max_events"),
        ("sqlite:///x.db?max_events=0", "max_events must be positive"),
        ("sqlite:///x.db?timeout=-1", "timeout"),
    ],
    ids=[
        "host",
        "no-path",
        "unknown-option",
        "synchronous",
        "max-events-nan",
        "max-events-0",
        "timeout",
    ],
)
def test_bad_urls_fail_at_construction(
    url: str, complaint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=complaint):
        SQLiteOutbox.from_url(url)


def test_an_unopenable_path_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        SQLiteOutbox(tmp_path)  # a directory


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    SQLiteOutbox(tmp_path / "o.db").close()
    with sqlite3.connect(tmp_path / "o.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="upgrade pixelmirror"):
        SQLiteOutbox(tmp_path / "o.db")


# The schemas written before an event's queue row and its body parted, as they were: 0.1's
# (user_version 1: no destination column) and version 2's (destination last).
_OLD_EVENT_COLUMNS = """id INTEGER PRIMARY KEY AUTOINCREMENT, pixel_id TEXT NOT NULL,
    test_event_code TEXT, event_id TEXT NOT NULL, event_name TEXT NOT NULL,
    event_time INTEGER NOT NULL, action_source TEXT NOT NULL, payload BLOB NOT NULL"""
_OLD_DESTINATION = ", destination TEXT NOT NULL DEFAULT 'meta'"
_OLD_SCHEMAS = {
    version: (
        f"""CREATE TABLE events ({_OLD_EVENT_COLUMNS}{extra},
            attempts INTEGER NOT NULL DEFAULT 0, due REAL NOT NULL, claim_token INTEGER)""",
        f"CREATE INDEX events_claim ON events (due, id,{key} pixel_id, test_event_code)",
        f"""CREATE TABLE dead ({_OLD_EVENT_COLUMNS}{extra}, attempts INTEGER NOT NULL,
            reason TEXT NOT NULL, died_at REAL NOT NULL)""",
        f"PRAGMA user_version = {version}",
    )
    for version, extra, key in ((1, "", ""), (2, _OLD_DESTINATION, " destination,"))
}


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_file_is_upgraded_and_nothing_is_lost(
    version: int, tmp_path: Path, make_event: MakeEvent
) -> None:
    # 0.1 had Meta alone; a version 2 file keeps each event's destination.
    destination = "meta" if version == 1 else "audit"
    waiting = [make_event(event_id=f"w{n}", destination=destination) for n in range(3)]
    held, retried = make_event(event_id="held", destination=destination), waiting.pop()
    died = make_event(event_id="died", test_event_code="T1", destination=destination)
    columns = "pixel_id, test_event_code, event_id, event_name, event_time, action_source, payload"
    columns += ", destination" if version == 2 else ""

    def row(event: ServerEvent) -> tuple[object, ...]:
        fields = (event.pixel_id, event.test_event_code, event.event_id, event.event_name)
        fields += (event.event_time, event.action_source, event.payload)
        return fields + ((event.destination,) if version == 2 else ())

    insert = f"INSERT INTO events ({columns}, attempts, due, claim_token) VALUES "
    insert += f"({'?, ' * columns.count(',')}?, ?, ?, ?)"
    with sqlite3.connect(tmp_path / "o.db") as conn:
        for statement in _OLD_SCHEMAS[version]:
            conn.execute(statement)
        for event in waiting:
            conn.execute(insert, (*row(event), 0, 0, None))
        conn.execute(insert, (*row(held), 0, time.time() + HOUR, 77))  # claimed, lease on
        conn.execute(insert, (*row(retried), 2, 0, None))  # released twice, due now
        conn.execute(
            f"INSERT INTO dead ({columns}, attempts, reason, died_at) VALUES "
            f"({'?, ' * columns.count(',')}?, ?, ?, ?)",
            (*row(died), 3, "refused", 1.0),
        )
    conn.close()

    outbox = SQLiteOutbox(tmp_path / "o.db")
    assert outbox.counts() == counts(pending=3, in_flight=1, dead=1)
    claims = outbox.claim(10, lease=HOUR)
    assert [claim.event for claim in claims] == [*waiting, retried]
    assert [claim.attempts for claim in claims] == [0, 0, 2]
    assert [letter.event for letter in outbox.dead_letters()] == [died]
    outbox.ack([Claimed("3:77", held, 0)])  # a receipt written before the upgrade holds
    outbox.ack(claims)
    outbox.put([make_event(event_id="new")])
    (new,) = outbox.claim(10, lease=HOUR)
    assert new.receipt.startswith("1:")  # a freed id, given again
    outbox.ack(claims)  # stale receipts: they answer for nothing now
    assert outbox.counts() == counts(in_flight=1, dead=1)
    assert outbox.replay_dead() == 1
    outbox.bury([new], "bad")
    assert [claim.event for claim in outbox.claim(10, lease=HOUR)] == [died]
    assert outbox.counts() == counts(in_flight=1, dead=1)
    outbox.close()
    with sqlite3.connect(tmp_path / "o.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        assert conn.execute("SELECT id FROM bodies").fetchall() == [(2,)]  # the replayed letter
    conn.close()


def test_a_new_file_gets_large_pages_and_an_existing_one_keeps_its_own(
    tmp_path: Path, make_event: MakeEvent
) -> None:
    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("CREATE TABLE unrelated (x)")
    conn.close()
    for name, size in (("new.db", PAGE_SIZE), ("old.db", 4096)):
        outbox = SQLiteOutbox(tmp_path / name)
        outbox.put([make_event(event_id=name)])
        assert ids(outbox.claim(10, lease=HOUR)) == [name]
        with sqlite3.connect(tmp_path / name) as conn:
            assert conn.execute("PRAGMA page_size").fetchone() == (size,)
        conn.close()
        outbox.close()


def test_an_upgrade_that_fails_leaves_the_file_as_it_was(
    tmp_path: Path, make_event: MakeEvent
) -> None:
    with sqlite3.connect(tmp_path / "o.db") as conn:
        for statement in _OLD_SCHEMAS[2]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO events (pixel_id, event_id, event_name, event_time, action_source,"
            " payload, due) VALUES ('1', 'kept', 'Lead', 0, 'website', x'7b7d', 0)"
        )
        # A stray table in the way: copying the bodies fails half way through the upgrade.
        conn.execute("CREATE TABLE bodies (id INTEGER PRIMARY KEY, event_id TEXT)")
        conn.execute("INSERT INTO bodies VALUES (1, 'stray')")
    conn.close()

    with pytest.raises(sqlite3.OperationalError):
        SQLiteOutbox(tmp_path / "o.db")

    with sqlite3.connect(tmp_path / "o.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        assert conn.execute("SELECT event_id FROM events").fetchall() == [("kept",)]
    conn.close()


def test_everything_survives_reopening(tmp_path: Path, make_event: MakeEvent) -> None:
    outbox = SQLiteOutbox(tmp_path / "o.db")
    outbox.put([make_event(event_id=f"e{n}", test_event_code="T1") for n in range(4)])
    claims = outbox.claim(3, lease=HOUR)
    outbox.bury(claims[:1], "rejected")
    outbox.release(claims[1:2], delay=0)
    outbox.close()

    reopened = SQLiteOutbox(tmp_path / "o.db")
    assert reopened.counts() == counts(pending=2, in_flight=1, dead=1)
    assert [letter.reason for letter in reopened.dead_letters()] == ["rejected"]
    reopened.ack(claims[2:])  # receipts outlive the connection that issued them
    again = reopened.claim(10, lease=HOUR)
    assert ids(again) == ["e1", "e3"]
    assert [claim.attempts for claim in again] == [1, 0]
    assert again[0].event == claims[1].event
    reopened.close()


def test_lease_expiry_counts_as_pending(tmp_path: Path, make_event: MakeEvent) -> None:
    outbox = SQLiteOutbox(tmp_path / "o.db")
    outbox.put([make_event(), make_event()])
    outbox.claim(1, lease=0)
    outbox.claim(1, lease=HOUR)
    assert outbox.counts() == counts(pending=1, in_flight=1)
    outbox.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def test_a_lease_runs_on_the_wall_clock(
    tmp_path: Path, make_event: MakeEvent, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(sqlite_outbox, "time", clock)  # this module's clock only
    outbox = SQLiteOutbox(tmp_path / "o.db")
    outbox.put([make_event()])
    (claim,) = outbox.claim(1, lease=30)

    clock.now += 29.9
    assert outbox.claim(1, lease=30) == []
    assert outbox.counts() == counts(in_flight=1)
    clock.now += 0.1
    assert outbox.counts() == counts(pending=1)
    outbox.release([claim], delay=10)  # the owner answers in time: still its claim
    clock.now += 9.9
    assert outbox.claim(1, lease=30) == []
    clock.now += 0.1
    assert len(outbox.claim(1, lease=30)) == 1
    outbox.close()


def _run_python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


CLAIMER = """
import json, sys
from pixelmirror.outbox.sqlite import SQLiteOutbox

outbox = SQLiteOutbox(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
seen = []
while batch := outbox.claim(int(sys.argv[2]), lease=3600):
    seen += [claim.event.event_id for claim in batch]
    outbox.ack(batch)
outbox.close()
print(json.dumps(seen), flush=True)
"""


def test_processes_claim_disjoint_batches(tmp_path: Path, make_event: MakeEvent) -> None:
    path = tmp_path / "o.db"
    outbox = SQLiteOutbox(path)
    expected = {f"e{n}" for n in range(600)}
    assert outbox.put([make_event(event_id=event_id) for event_id in sorted(expected)]) == 600

    workers = [_run_python(CLAIMER, str(path), "7") for _ in range(3)]
    for worker in workers:
        assert worker.stdout is not None
        assert worker.stdout.readline() == "ready\n"
    for worker in workers:  # start them together
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    seen = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        seen.append(json.loads(out.splitlines()[-1]))

    everything = [event_id for mine in seen for event_id in mine]
    assert len(everything) == len(set(everything)) == len(expected)
    assert set(everything) == expected
    assert outbox.counts() == counts()
    outbox.close()


PUTTER = """
import sys, time
from pixelmirror.events import ServerEvent
from pixelmirror.outbox.sqlite import SQLiteOutbox

outbox = SQLiteOutbox(sys.argv[1])
for n in range(int(sys.argv[2])):
    event = ServerEvent(
        pixel_id="1", event_id=f"k{n}", event_name="Lead", event_time=int(time.time()),
        action_source="website", payload=b'{"n": %d}' % n,
    )
    assert outbox.put([event]) == 1
    print(event.event_id, flush=True)
sys.stdin.read()  # connection open, nothing checkpointed: wait for SIGKILL
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_put_that_returned_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    SQLiteOutbox(path).close()  # create the file before the child opens it
    child = _run_python(PUTTER, str(path), "50")
    assert child.stdout is not None
    acknowledged = [child.stdout.readline().strip() for _ in range(50)]
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert (tmp_path / "o.db-wal").stat().st_size > 0  # the events live in the WAL

    reopened = SQLiteOutbox(path)
    assert ids(reopened.claim(1000, lease=HOUR)) == acknowledged == [f"k{n}" for n in range(50)]
    reopened.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("explicit", [True, False], ids=["after_fork", "detected"])
def test_a_forked_child_gets_its_own_connection(
    explicit: bool, tmp_path: Path, make_event: MakeEvent
) -> None:
    outbox = SQLiteOutbox(tmp_path / "o.db")
    outbox.put([make_event(event_id="parent")])
    inherited = outbox._db.conn

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            if explicit:
                outbox.after_fork()
            if outbox.put([make_event(event_id="child")]) == 1 and outbox._db.conn is not inherited:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert outbox._db.conn is inherited
    assert sorted(ids(outbox.claim(10, lease=HOUR))) == ["child", "parent"]
    outbox.close()


def test_after_fork_in_the_same_process_changes_nothing(tmp_path: Path) -> None:
    outbox = SQLiteOutbox(tmp_path / "o.db")
    conn = outbox._db.conn
    outbox.after_fork()
    assert outbox._db.conn is conn
    outbox.close()


def test_put_on_a_locked_database_drops_and_does_not_raise(
    tmp_path: Path, make_event: MakeEvent, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = SQLiteOutbox(tmp_path / "o.db", timeout=0)
    blocker = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")

    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        assert outbox.put([make_event(), make_event()]) == 0
    assert outbox.counts() == counts(dropped=2)  # WAL readers are not blocked by a writer
    assert "database is locked" in caplog.text

    blocker.execute("ROLLBACK")
    blocker.close()
    assert outbox.put([make_event()]) == 1
    assert outbox.counts() == counts(pending=1, dropped=2)
    outbox.close()


def test_write_on_a_locked_database_raises_and_counts_nothing(
    tmp_path: Path, make_event: MakeEvent
) -> None:
    outbox = SQLiteOutbox(tmp_path / "o.db", timeout=0)
    blocker = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        outbox.write([make_event(), make_event()])  # the writer thread keeps them and retries
    blocker.execute("ROLLBACK")
    blocker.close()
    assert outbox.write([make_event()]) == 1
    assert outbox.counts() == counts(pending=1)
    outbox.close()


def test_replay_dead_commits_in_chunks_and_lets_others_write_between_them(
    tmp_path: Path, make_event: MakeEvent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_outbox, "REPLAY_CHUNK", 1000)
    outbox = SQLiteOutbox(tmp_path / "o.db")
    letters = [make_event(event_id=f"dead-{n}") for n in range(4500)]
    with sqlite3.connect(tmp_path / "o.db") as conn:
        conn.executemany(
            "INSERT INTO dead (pixel_id, test_event_code, event_id, event_name, event_time,"
            " action_source, payload, attempts, reason, died_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 3, 'rejected', 0)",
            [
                (
                    e.pixel_id,
                    e.test_event_code,
                    e.event_id,
                    e.event_name,
                    e.event_time,
                    e.action_source,
                    e.payload,
                )
                for e in letters
            ],
        )
    # Another process, at the start of each of the replay's transactions: it may write only
    # if the replay holds no write lock at that moment (no waiting: timeout 0).
    other = sqlite3.connect(tmp_path / "o.db", timeout=0, isolation_level=None)
    between: list[str] = []

    def other_process_writes(statement: str) -> None:
        if statement != "BEGIN IMMEDIATE":
            return
        try:
            other.execute("INSERT INTO events (pixel_id, due) VALUES ('9', 0)")
            other.execute(
                "INSERT INTO bodies (id, event_id, event_name, event_time, action_source,"
                " payload) VALUES (last_insert_rowid(), ?, 'Lead', 0, 'website', x'')",
                (f"other-{len(between)}",),
            )
            between.append("wrote")
        except sqlite3.OperationalError as exc:
            between.append(str(exc))

    assert outbox._db.conn is not None
    outbox._db.conn.set_trace_callback(other_process_writes)
    assert outbox.replay_dead() == 4500
    outbox._db.conn.set_trace_callback(None)
    other.close()
    assert between == ["wrote"] * 5  # five chunks: 4 of 1000, 1 of 500
    assert outbox.counts() == counts(pending=4505)
    moved = outbox.claim(1000, lease=HOUR, skip_pixels=["9"])
    assert ids(moved) == [e.event_id for e in letters[:1000]]  # oldest first
    outbox.close()


def test_put_on_a_full_disk_drops_and_does_not_raise(
    tmp_path: Path, make_event: MakeEvent, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = SQLiteOutbox(tmp_path / "o.db")
    conn = outbox._db.conn
    assert conn is not None
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: a full disk

    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        assert outbox.put([make_event(payload=b"x" * 100_000)]) == 0
    assert outbox.counts() == counts(dropped=1)
    assert "full" in caplog.text
    outbox.close()


def test_put_after_close_drops_and_does_not_raise(tmp_path: Path, make_event: MakeEvent) -> None:
    outbox = SQLiteOutbox(tmp_path / "o.db")
    outbox.close()
    assert outbox.put([make_event()]) == 0
    assert outbox._drops.total == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_closing_leaves_the_parent_working(
    tmp_path: Path, make_event: MakeEvent
) -> None:
    outbox = SQLiteOutbox(tmp_path / "o.db")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            outbox.close()
            code = 0 if outbox.put([make_event()]) == 0 else 1  # closed in the child only
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert outbox.put([make_event()]) == 1
    assert outbox.counts() == counts(pending=1)
    outbox.close()


def test_memory_dead_letters_past_the_bound_are_counted_as_dropped(make_event: MakeEvent) -> None:
    outbox = MemoryOutbox(max_events=10, max_dead=2)
    outbox.put([make_event(event_id=f"e{n}") for n in range(3)])
    outbox.bury(outbox.claim(10, lease=HOUR), "rejected")
    assert [letter.event.event_id for letter in outbox.dead_letters()] == ["e2", "e1"]
    assert (outbox.counts().dead, outbox.counts().dropped) == (2, 1)


def test_memory_replay_leaves_what_does_not_fit_dead(make_event: MakeEvent) -> None:
    outbox = MemoryOutbox(max_events=2)
    outbox.put([make_event(event_id=f"e{n}") for n in range(2)])
    outbox.bury(outbox.claim(10, lease=HOUR), "rejected")
    outbox.put([make_event(event_id="busy")])
    assert outbox.replay_dead() == 1
    counts = outbox.counts()
    assert (counts.pending, counts.dead, counts.dropped) == (2, 1, 0)


def test_unfinished_counts_by_pixel(outbox: Outbox, make_event: MakeEvent) -> None:
    outbox.put([make_event("1"), make_event("1"), make_event("2")])
    claims = outbox.claim(1, lease=HOUR)  # in flight still counts
    outbox.bury(outbox.claim(10, lease=HOUR, skip_pixels={"1"}), "rejected")  # dead does not
    assert len(claims) == 1
    assert outbox.unfinished_by_pixel() == {"1": 2}

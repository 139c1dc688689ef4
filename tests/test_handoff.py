"""The handoff between requests and a durable outbox: bounded, grouped, riding out outages,
flushable, fork-safe. A SQLite file stands in for any store that can fail: another
connection holding its write lock makes every write fail until it lets go."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from conftest import MakeEvent
from pixelmirror.events import ServerEvent
from pixelmirror.handoff import GROUP_SIZE, Handoff, NotStored
from pixelmirror.outbox.sqlite import SQLiteOutbox
from waiting import wait_until


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[SQLiteOutbox]:
    # A short busy timeout: a held lock fails writes fast, so retries are many and quick.
    opened = SQLiteOutbox(tmp_path / "outbox.db", timeout=0.02)
    yield opened
    opened.close()


@pytest.fixture
def writes(outbox: SQLiteOutbox, monkeypatch: pytest.MonkeyPatch) -> list[int | str]:
    """Every write the outbox is asked for: its group size, or the error it raised."""
    made: list[int | str] = []
    write = outbox.write

    def recording(events: Sequence[ServerEvent]) -> int:
        try:
            taken = write(events)
        except Exception as exc:
            made.append(type(exc).__name__)
            raise
        made.append(len(events))
        return taken

    monkeypatch.setattr(outbox, "write", recording)
    return made


@pytest.fixture
def lock(outbox: SQLiteOutbox) -> Iterator[Callable[[], None]]:
    """Hold the outbox file's write lock from another connection; call the result to let go."""
    other = sqlite3.connect(outbox.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    yield lambda: other.rollback() if other.in_transaction else None
    other.close()


def stored(outbox: SQLiteOutbox) -> list[str]:
    with sqlite3.connect(outbox.path) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM bodies ORDER BY id")]


def test_events_put_while_the_writer_lingers_share_one_write(
    outbox: SQLiteOutbox, writes: list[int | str], make_event: MakeEvent
) -> None:
    handoff = Handoff(outbox, linger=60)  # only flush() ends this linger
    events = [make_event() for _ in range(100)]
    handoff.put(events[:1])
    for event in events[1:]:
        handoff.put([event])
    assert handoff.flush(timeout=10)
    assert writes == [100]
    assert stored(outbox) == [e.event_id for e in events]
    handoff.close(timeout=1)


def test_a_big_backlog_is_written_in_groups(
    outbox: SQLiteOutbox, writes: list[int | str], make_event: MakeEvent
) -> None:
    handoff = Handoff(outbox, linger=0)
    events = [make_event() for _ in range(2 * GROUP_SIZE + 1)]
    assert handoff.put(events) == len(events)
    assert handoff.flush(timeout=10)
    assert writes == [GROUP_SIZE, GROUP_SIZE, 1]
    assert stored(outbox) == [e.event_id for e in events]
    handoff.close(timeout=1)


def test_a_full_group_is_written_without_lingering(
    outbox: SQLiteOutbox, writes: list[int | str], make_event: MakeEvent
) -> None:
    handoff = Handoff(outbox, linger=3600)  # a short group would wait an hour
    events = [make_event() for _ in range(2 * GROUP_SIZE)]
    assert handoff.put(events) == len(events)
    wait_until(lambda: writes == [GROUP_SIZE, GROUP_SIZE])  # no flush: nobody hurries it
    assert stored(outbox) == [e.event_id for e in events]
    handoff.close(timeout=1)


def test_a_failing_outbox_is_retried_and_the_outage_logged_once(
    outbox: SQLiteOutbox,
    writes: list[int | str],
    lock: Callable[[], None],
    make_event: MakeEvent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handoff = Handoff(outbox, linger=0)
    events = [make_event() for _ in range(20)]
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        for event in events:
            assert handoff.put([event]) == 1  # never waits for the lock
        wait_until(lambda: writes.count("OperationalError") >= 3)
        assert "locked" in (handoff.error or "")
        assert handoff.held == 20
        lock()
        assert handoff.flush(timeout=10)
    assert stored(outbox) == [e.event_id for e in events]
    assert handoff.error is None
    assert handoff.drops.total == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("fails (OperationalError" in m for m in messages) == 1
    assert sum("answers again" in m for m in messages) == 1
    handoff.close(timeout=1)


def test_a_full_handoff_drops_counts_and_logs_once(
    outbox: SQLiteOutbox,
    lock: Callable[[], None],
    make_event: MakeEvent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handoff = Handoff(outbox, max_events=10, linger=0)
    kept = [make_event() for _ in range(10)]
    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        assert handoff.put(kept) == 10
        for _ in range(5):
            assert handoff.put([make_event()]) == 0
        assert handoff.drops.total == 5
        full = [r.getMessage() for r in caplog.records if "handoff is full" in r.getMessage()]
        assert len(full) == 1  # the first drop of the spell, not every one
        lock()
        assert handoff.flush(timeout=10)
    assert stored(outbox) == [e.event_id for e in kept]
    assert "5 event(s) were dropped while it was full" in caplog.text
    handoff.close(timeout=1)


def test_put_and_wait_returns_with_the_events_stored(
    outbox: SQLiteOutbox, make_event: MakeEvent
) -> None:
    handoff = Handoff(outbox, linger=60)  # the waiter cuts the linger short
    event = make_event()
    handoff.put_and_wait([event], timeout=10)
    assert stored(outbox) == [event.event_id]
    handoff.close(timeout=1)


def test_put_and_wait_raises_when_the_outbox_does_not_take_them_in_time(
    outbox: SQLiteOutbox, lock: Callable[[], None], make_event: MakeEvent
) -> None:
    handoff = Handoff(outbox, linger=0)
    event = make_event()
    with pytest.raises(NotStored, match=r"not stored in the outbox .* within 0.2s \(.*locked"):
        handoff.put_and_wait([event], timeout=0.2)
    lock()
    assert handoff.flush(timeout=10)  # still handed over: stored once the lock is gone
    assert stored(outbox) == [event.event_id]
    handoff.close(timeout=1)


def test_put_and_wait_raises_when_the_outbox_is_full(tmp_path: Path, make_event: MakeEvent) -> None:
    outbox = SQLiteOutbox(tmp_path / "full.db", max_events=1)
    handoff = Handoff(outbox, linger=0)
    handoff.put_and_wait([make_event()], timeout=10)
    with pytest.raises(NotStored, match="dropped by the outbox"):
        handoff.put_and_wait([make_event()], timeout=10)
    handoff.close(timeout=1)
    outbox.close()


def test_close_stores_what_it_can_and_logs_how_many_it_could_not(
    outbox: SQLiteOutbox,
    lock: Callable[[], None],
    make_event: MakeEvent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handoff = Handoff(outbox, linger=0)
    handoff.put([make_event() for _ in range(7)])
    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        assert handoff.close(timeout=0.2) == 7
    assert "dropped 7 event(s): not stored in the outbox within the 0.2s of closing" in (
        caplog.text
    )
    assert handoff.drops.total == 7
    assert handoff.put([make_event()]) == 0  # closed: counted, not queued
    with pytest.raises(NotStored, match="closed"):
        handoff.put_and_wait([make_event()], timeout=1)
    assert handoff.drops.total == 9
    wait_until(lambda: not handoff.running)


def test_close_drains_a_healthy_outbox(outbox: SQLiteOutbox, make_event: MakeEvent) -> None:
    handoff = Handoff(outbox, linger=60)
    events = [make_event() for _ in range(3)]
    handoff.put(events)
    assert handoff.close(timeout=10) == 0
    assert stored(outbox) == [e.event_id for e in events]
    assert not handoff.running


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_empty_with_a_writer_of_its_own(
    outbox: SQLiteOutbox, make_event: MakeEvent
) -> None:
    handoff = Handoff(outbox, linger=60)  # the parent's event waits out the linger, unwritten
    handoff.put([make_event(event_id="parent")])
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        signal.alarm(30)
        code = 1
        try:
            outbox.after_fork()  # what PixelMirror's at-fork hook does
            handoff.after_fork()
            fresh = handoff.held == 0 and handoff.running
            handoff.put([make_event(event_id="child")])
            if fresh and handoff.flush(timeout=20):
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert stored(outbox) == ["child"]  # the child wrote its own event, not the parent's
    assert handoff.held == 1
    assert handoff.flush(timeout=10)
    assert stored(outbox) == ["child", "parent"]
    handoff.close(timeout=1)

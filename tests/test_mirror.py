from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import redisutil
from conftest import PIXEL, TOKEN, MakeMirror
from pixelmirror import PixelMirror, lifecycle
from pixelmirror.events import ServerEvent
from pixelmirror.handoff import NotStored
from pixelmirror.operations import DRY_RUN_LOUD
from pixelmirror.testing import FakeGraphAPI
from waiting import wait_until


def approval(mirror: PixelMirror, n: int = 0, **overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "action_source": "system_generated",
        "user_data": {"external_id": f"cust-{n}", "email": "ann@example.com"},
        "custom_data": {"value": n},
    }
    arguments.update(overrides)
    return mirror.send("Approval", **arguments)


def test_send_reaches_meta_hashed_with_its_id(make_mirror: MakeMirror, fake: FakeGraphAPI) -> None:
    mirror = make_mirror(test_event_code="TEST77")
    event_id = approval(mirror, 9, custom_data={"value": 1, "currency": "USD"})
    assert mirror.flush(timeout=10)
    (received,) = fake.events
    assert received.pixel_id == PIXEL
    assert received.test_event_code == "TEST77"
    assert received.event_id == event_id
    assert received.user_data["em"] == hashlib.sha256(b"ann@example.com").hexdigest()
    assert "ann@example.com" not in json.dumps(received.data)
    stats = mirror.stats()
    assert (stats.queued, stats.sent, stats.pending, stats.dead) == (1, 1, 0, 0)


def test_ten_thousand_events_survive_a_flaky_meta(make_mirror: MakeMirror) -> None:
    flaky = FakeGraphAPI(access_tokens={TOKEN}, failure_rate=0.3, seed=7)
    mirror = make_mirror(transport=flaky.transport, queue_size=20_000)
    sent_ids = [approval(mirror, n) for n in range(10_000)]
    assert mirror.flush(timeout=120)
    received = collections.Counter(flaky.event_ids())
    assert set(received) == set(sent_ids)
    assert max(received.values()) == 1  # each event_id exactly once
    statuses = collections.Counter(r.status for r in flaky.requests)
    assert {500, 503, 429} <= set(statuses)  # the faults really happened
    stats = mirror.stats()
    assert (stats.sent, stats.dead, stats.dropped, stats.pending) == (10_000, 0, 0, 0)
    assert stats.retried > 0


def test_dry_run_builds_logs_and_counts_without_sending(
    make_mirror: MakeMirror, fake: FakeGraphAPI, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = make_mirror(access_token=None)
    with caplog.at_level(logging.INFO, logger="pixelmirror"):
        event_id = approval(mirror)
    assert mirror.dispatcher is None
    assert fake.requests == []
    assert mirror.stats().dry_run == 1
    assert event_id in caplog.text
    assert "ann@example.com" not in caplog.text
    with pytest.raises(ValueError, match="action_source"):
        approval(mirror, action_source="web")


def test_the_first_dry_run_events_are_warnings_then_info(
    make_mirror: MakeMirror, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = make_mirror(access_token=None)
    with caplog.at_level(logging.INFO, logger="pixelmirror"):
        ids = [approval(mirror, n) for n in range(DRY_RUN_LOUD + 2)]
    levels = {
        event_id: record.levelno
        for record in caplog.records
        for event_id in ids
        if event_id in record.getMessage()
    }
    assert [levels[event_id] for event_id in ids] == [logging.WARNING] * DRY_RUN_LOUD + [
        logging.INFO
    ] * 2
    assert not [r for r in caplog.records if r.getMessage().startswith("pixelmirror")]


def test_a_dry_run_shows_its_events_on_stderr_without_any_logging_set_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [name for name in os.environ if name.startswith("PIXELMIRROR_")]:
        monkeypatch.delenv(name)
    script = (
        "from pixelmirror import PixelMirror\n"
        "m = PixelMirror(pixel_id='1234567890')\n"
        "m.send('Approval', action_source='system_generated', user_data={'external_id': 'c1'})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "dry run: Approval" in done.stderr
    assert '"external_id"' in done.stderr


def test_memory_outbox_overflow_is_counted_and_logged(
    make_mirror: MakeMirror, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = make_mirror(queue_size=2, dispatch="external")
    with caplog.at_level(logging.ERROR, logger="pixelmirror"):
        for n in range(3):
            approval(mirror, n)
    stats = mirror.stats()
    assert (stats.queued, stats.dropped, stats.pending) == (2, 1, 2)
    assert "outbox full" in caplog.text


def test_send_with_wait_returns_with_the_event_in_the_sqlite_file(
    make_mirror: MakeMirror, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    mirror = make_mirror(outbox=f"sqlite:///{path}", dispatch="external", handoff_linger=1)
    event_id = approval(mirror, wait=True)  # no waiting out the linger either
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT event_id FROM bodies").fetchall() == [(event_id,)]
    assert mirror.stats().queued == 1


def test_send_with_wait_raises_when_the_event_cannot_be_stored(
    make_mirror: MakeMirror, tmp_path: Path
) -> None:
    mirror = make_mirror(queue_size=1, dispatch="external")
    approval(mirror, 1, wait=True)
    with pytest.raises(NotStored, match="dropped by the outbox memory://"):
        approval(mirror, 2, wait=True)
    path = tmp_path / "outbox.db"
    durable = make_mirror(outbox=f"sqlite:///{path}?timeout=0.01", dispatch="external")
    with sqlite3.connect(path, isolation_level=None) as other:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(NotStored, match=r"within 0.2s \(OperationalError"):
            approval(durable, 3, wait=0.2)
        other.rollback()


def test_a_write_lock_held_by_another_process_delays_events_and_drops_none(
    make_mirror: MakeMirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "outbox.db"
    mirror = make_mirror(outbox=f"sqlite:///{path}?timeout=0.05", dispatch="external")
    failed: list[int] = []
    write = mirror.outbox.write

    def counting_failures(events: Sequence[ServerEvent]) -> int:
        try:
            return write(events)
        except sqlite3.OperationalError:
            failed.append(len(events))
            raise

    monkeypatch.setattr(mirror.outbox, "write", counting_failures)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # say `pixelmirror outbox replay-dead` in another process
    sent = [approval(mirror, n) for n in range(200)]  # none waits for the lock
    wait_until(lambda: len(failed) >= 6)  # a second or two of retrying, with backoff
    assert mirror.stats().dropped == 0
    other.rollback()
    other.close()
    assert mirror.handoff is not None
    assert mirror.handoff.flush(timeout=10)
    with sqlite3.connect(path) as conn:
        stored = [row[0] for row in conn.execute("SELECT event_id FROM bodies ORDER BY id")]
    assert stored == sent
    stats = mirror.stats()
    assert (stats.dropped, stats.pending, stats.handoff, stats.outbox_error) == (0, 200, 0, None)


def test_close_is_idempotent_and_flushes(make_mirror: MakeMirror, fake: FakeGraphAPI) -> None:
    mirror = make_mirror(flush_interval=3600)
    approval(mirror)
    mirror.close(timeout=5)
    mirror.close(timeout=5)
    assert len(fake.events) == 1
    assert mirror.dispatcher is not None
    assert not mirror.dispatcher.running


@pytest.mark.parametrize(
    ("fault", "ok", "hint"),
    [
        pytest.param(None, True, None, id="accepted"),
        pytest.param(
            {"status": 400, "error": FakeGraphAPI.graph_error(190, "Session has expired")},
            False,
            "access token is invalid",
            id="bad-token",
        ),
        pytest.param(
            {"status": 400, "error": FakeGraphAPI.graph_error(2635, "deprecated version")},
            False,
            "PIXELMIRROR_API_VERSION",
            id="dead-version",
        ),
        pytest.param(
            {
                "status": 400,
                "error": FakeGraphAPI.graph_error(
                    100, "Invalid appsecret_proof provided in the API argument"
                ),
            },
            False,
            "PIXELMIRROR_APP_SECRET",
            id="wrong-app-secret",
        ),
        pytest.param(
            {"status": 503, "body": "Service Unavailable"}, False, "try again", id="outage"
        ),
    ],
)
def test_check_reports_meta_answer(
    make_mirror: MakeMirror,
    fake: FakeGraphAPI,
    fault: dict[str, Any] | None,
    ok: bool,
    hint: str | None,
) -> None:
    mirror = make_mirror(dispatch="external")
    if fault:
        fake.fail_next(**fault)
    result = mirror.check(test_event_code="TEST1")
    assert result.ok is ok
    if ok:
        assert result.events_received == 1
        assert fake.events[0].test_event_code == "TEST1"
    else:
        assert hint is not None
        assert result.hint is not None
        assert hint in result.hint
        assert TOKEN not in (result.error or "")


def run_python(code: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_sqlite_outbox_survives_sigkill_and_the_next_process_delivers_once(
    tmp_path: Path,
) -> None:
    fake = FakeGraphAPI(access_tokens={TOKEN})
    with fake.serve() as graph_url:
        env = {
            "PIXELMIRROR_PIXEL_ID": PIXEL,
            "PIXELMIRROR_ACCESS_TOKEN": TOKEN,
            "PIXELMIRROR_GRAPH_URL": graph_url,
            "PIXELMIRROR_OUTBOX": f"sqlite:///{tmp_path / 'outbox.db'}",
        }
        writer = run_python(
            """
            import sys, time
            from pixelmirror import PixelMirror
            mirror = PixelMirror(dispatch="external")
            for n in range(200):
                # wait=True: returned means stored, as a job that must survive SIGKILL asks
                event_id = mirror.send("Approval", action_source="system_generated",
                                       user_data={"external_id": f"cust-{n}"}, wait=True)
                print(event_id, flush=True)
            print("queued", flush=True)
            time.sleep(60)
            """,
            env,
        )
        assert writer.stdout is not None
        ids = []
        for line in writer.stdout:
            if line.strip() == "queued":
                break
            ids.append(line.strip())
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        assert writer.returncode == -signal.SIGKILL
        assert len(ids) == 200
        assert fake.requests == []

        sender = run_python(
            """
            from pixelmirror import PixelMirror
            mirror = PixelMirror(flush_interval=0.05)
            print(mirror.flush(timeout=30), mirror.stats().sent, flush=True)
            """,
            env,
        )
        out, _ = sender.communicate(timeout=60)
    assert out.split() == ["True", "200"]
    received = collections.Counter(fake.event_ids())
    assert set(received) == set(ids)
    assert max(received.values()) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_dispatcher(make_mirror: MakeMirror, tmp_path: Path) -> None:
    fake = FakeGraphAPI(access_tokens={TOKEN})
    with fake.serve() as graph_url:
        mirror = make_mirror(
            transport=None, graph_url=graph_url, outbox=f"sqlite:///{tmp_path / 'o.db'}"
        )
        parent_dispatcher = mirror.dispatcher
        pid = os.fork()
        if pid == 0:  # the child: like a gunicorn worker forked after the app was built
            signal.alarm(30)  # a hung child must not hang the suite
            try:
                approval(mirror, 1)
                ok = mirror.flush(timeout=20) and mirror.dispatcher is not parent_dispatcher
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert len(fake.events) == 1
        assert mirror.dispatcher is parent_dispatcher
        assert parent_dispatcher.running


def test_an_unavailable_redis_is_reported_and_never_raises(
    make_mirror: MakeMirror, down_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = make_mirror(outbox=down_redis)
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        approval(mirror, 1)
        approval(mirror, 2)
        stats = mirror.stats()
        assert stats.outbox_error is not None
        assert "Error" in stats.outbox_error  # ConnectionError or TimeoutError, with the why
        assert (stats.pending, stats.in_flight, stats.dead) == (None, None, None)
        assert (stats.queued, stats.handoff) == (2, 2)
        assert mirror.flush(timeout=0.3) is False
        mirror.close(timeout=0.5)
    assert mirror.stats().dropped == 2  # never stored: counted, not silently gone
    assert "unavailable (stats)" in caplog.text
    assert "dropped 2 event(s): not stored in the outbox within the 1s of closing" in (caplog.text)


@pytest.mark.parametrize("failure", ["unreachable redis", "close raises"])
def test_the_exit_hook_closes_every_mirror_even_when_one_fails(
    make_mirror: MakeMirror, failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirrors = [make_mirror(outbox=redisutil.UNREACHABLE_URL) for _ in range(3)]
    if failure == "close raises":
        for one in mirrors:
            close = one.close

            def failing(timeout: float | None = None, close: Any = close) -> None:
                close(timeout)
                raise RuntimeError("closing failed")

            monkeypatch.setattr(one, "close", failing)
    monkeypatch.setattr(lifecycle, "_live", weakref.WeakSet(mirrors))
    lifecycle.close_all()
    assert [one._closed for one in mirrors] == [True, True, True]
    assert all(one.dispatcher is not None and not one.dispatcher.running for one in mirrors)


def test_send_completes_a_national_phone_with_the_default_country(
    make_mirror: MakeMirror, fake: FakeGraphAPI
) -> None:
    mirror = make_mirror(default_country="gb")
    mirror.send("Lead", action_source="system_generated", user_data={"phone": "020 7946 0000"})
    assert mirror.flush(timeout=10)
    (event,) = fake.events
    assert event.user_data["ph"] == hashlib.sha256(b"442079460000").hexdigest()

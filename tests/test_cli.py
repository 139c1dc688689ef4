from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import pixelmirror
import redisutil
from pixelmirror import PixelMirror
from pixelmirror.cli import DRY_RUN_EXIT, main
from pixelmirror.testing import FakeGraphAPI

TOKEN = "EAA-cli-token"
PIXEL = "1234567890"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    values = {
        "PIXELMIRROR_PIXEL_ID": PIXEL,
        "PIXELMIRROR_ACCESS_TOKEN": TOKEN,
        "PIXELMIRROR_OUTBOX": f"sqlite:///{tmp_path / 'outbox.db'}",
        "PIXELMIRROR_FLUSH_INTERVAL": "0.05",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def test_check_in_a_dry_run_prints_the_event_says_nothing_reached_meta_and_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIXELMIRROR_PIXEL_ID", PIXEL)
    monkeypatch.delenv("PIXELMIRROR_ACCESS_TOKEN", raising=False)
    assert main(["check"]) == DRY_RUN_EXIT != 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert (result["dry_run"], result["pixel_id"]) == (True, PIXEL)
    assert "PixelMirrorCheck" in result["messages"][0]
    assert "nothing reached Meta" in err


def test_check_without_a_pixel_speaks_of_the_pixel_id_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PIXELMIRROR_PIXEL_ID", raising=False)
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "--pixel-id" in err
    assert "pixel_id=" not in err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"pixelmirror {pixelmirror.__version__}"


@pytest.mark.parametrize(
    ("token", "exit_code"),
    [pytest.param(TOKEN, 0, id="accepted"), pytest.param("EAA-revoked", 1, id="bad-token")],
)
def test_check_against_a_served_graph(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    token: str,
    exit_code: int,
) -> None:
    fake = FakeGraphAPI(access_tokens={TOKEN})
    monkeypatch.setenv("PIXELMIRROR_ACCESS_TOKEN", token)
    with fake.serve() as url:
        monkeypatch.setenv("PIXELMIRROR_GRAPH_URL", url)
        assert main(["check", "--test-event-code", "TEST5"]) == exit_code
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is (exit_code == 0)
    assert token not in json.dumps(result)
    if exit_code == 0:
        assert result["events_received"] == 1
        assert fake.events[0].test_event_code == "TEST5"
    else:
        assert "access token" in result["hint"]


def test_a_bad_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIXELMIRROR_PIXEL_ID", "abc")
    assert main(["check"]) == 2
    assert "PIXELMIRROR_PIXEL_ID must be digits" in capsys.readouterr().err


def test_outbox_stats_and_replay_dead(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeGraphAPI(access_tokens={TOKEN})
    mirror = PixelMirror(dispatch="external", transport=fake.transport)
    for who in ("a", "b"):
        mirror.send(
            "Lead", action_source="system_generated", user_data={"external_id": who}, wait=1
        )
    claims = mirror.outbox.claim(1, lease=60)
    mirror.outbox.bury(claims, "rejected by Meta: test")
    mirror.close(timeout=0)

    assert main(["outbox", "stats", "--dead", "5"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["pending"], stats["in_flight"], stats["dead"]) == (1, 0, 1)
    assert stats["dead_letters"][0]["reason"] == "rejected by Meta: test"
    assert stats["dead_letters"][0]["event_id"] == claims[0].event.event_id

    assert main(["outbox", "replay-dead"]) == 0
    assert json.loads(capsys.readouterr().out)["replayed"] == 1
    assert main(["outbox", "stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["pending"], stats["dead"]) == (2, 0)


def test_worker_refuses_a_memory_outbox(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIXELMIRROR_OUTBOX", "memory://")
    assert main(["worker"]) == 2
    assert "must be shared" in capsys.readouterr().err


def test_worker_drains_the_outbox_and_stops_on_sigterm(env: dict[str, str]) -> None:
    fake = FakeGraphAPI(access_tokens={TOKEN})
    with fake.serve() as url:
        web = PixelMirror(dispatch="external")
        ids = {
            web.send("Lead", action_source="system_generated", user_data={"external_id": str(n)})
            for n in range(50)
        }
        web.close(timeout=0)
        worker = subprocess.Popen(
            [sys.executable, "-m", "pixelmirror.cli", "worker", "--status-interval", "0.2"],
            env={**os.environ, **env, "PIXELMIRROR_GRAPH_URL": url},
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert fake.wait_for(50, timeout=30)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, log = worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert set(fake.event_ids()) == ids
    assert "finishing the batches in flight" in log
    assert "sent 50" in log


def test_worker_takes_tokens_from_a_resolver(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeGraphAPI(access_tokens={PIXEL: {"per-pixel-token"}})
    (tmp_path / "platform_tokens.py").write_text(
        f"def token_for(pixel_id):\n    return {{'{PIXEL}': 'per-pixel-token'}}.get(pixel_id)\n"
    )
    # The resolver's module beside this checkout's code, not an installed pixelmirror.
    env = {**env, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    del env["PIXELMIRROR_ACCESS_TOKEN"]
    monkeypatch.delenv("PIXELMIRROR_ACCESS_TOKEN")
    with fake.serve() as url:
        web = PixelMirror(dispatch="external")
        assert web.dry_run  # the web process holds no token at all
        web.close(timeout=0)
        web = PixelMirror(dispatch="external", tokens=lambda pixel: None)  # enqueue only
        event_id = web.send(
            "Lead", action_source="system_generated", user_data={"external_id": "t"}
        )
        web.close(timeout=0)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pixelmirror.cli",
                "worker",
                "--tokens",
                "platform_tokens:token_for",
            ],
            env={**os.environ, **env, "PIXELMIRROR_GRAPH_URL": url},
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert fake.wait_for(1, timeout=30)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=30)
    assert fake.event_ids() == [event_id]
    assert fake.events[0].access_token == "per-pixel-token"


def test_tokens_option_must_name_a_function(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--tokens", "no_colon"]) == 2
    assert "MODULE:FUNCTION" in capsys.readouterr().err
    assert main(["check", "--tokens", "json:nothing_here"]) == 2


def test_outbox_stats_counts_by_pixel(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    mirror = PixelMirror(dispatch="external", transport=FakeGraphAPI().transport)
    for pixel in ("111", "111", "222"):
        mirror.send(
            "Lead", pixel_id=pixel, action_source="system_generated", user_data={"external_id": "a"}
        )
    mirror.close(timeout=0)
    assert main(["outbox", "stats"]) == 0
    assert json.loads(capsys.readouterr().out)["unfinished_by_pixel"] == {"111": 2, "222": 1}


# --------------------------------------------------------------------------------------------
# An outbox that cannot be opened or reached: one line on stderr, exit 2, never a traceback


COMMANDS = [
    pytest.param(["outbox", "stats"], id="stats"),
    pytest.param(["outbox", "replay-dead"], id="replay-dead"),
    pytest.param(["outbox", "replay-dead", "--dry-run"], id="replay-dead-dry-run"),
    pytest.param(["worker"], id="worker"),
]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreachable_redis_is_one_line_naming_the_masked_url_and_the_cause(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    closed_port: int,
    command: list[str],
) -> None:
    monkeypatch.setenv("PIXELMIRROR_OUTBOX", f"redis://:s3cret-pw@127.0.0.1:{closed_port}/0")
    assert main(command) == 2
    out, err = capsys.readouterr()
    line = _one_line(err)
    assert f"redis://:***@127.0.0.1:{closed_port}/0" in line
    assert "s3cret-pw" not in line
    assert "ConnectionError" in line
    assert "refused" in line.lower()
    assert out == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_a_sqlite_path_that_is_a_directory_is_one_line_and_exit_2(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: list[str],
) -> None:
    monkeypatch.setenv("PIXELMIRROR_OUTBOX", f"sqlite:///{tmp_path}")
    assert main(command) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"sqlite:///{tmp_path}" in line
    assert "unable to open database file" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_sqlite_path_in_a_missing_directory_is_one_line_and_exit_2(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: list[str],
) -> None:
    path = tmp_path / "missing" / "outbox.db"
    monkeypatch.setenv("PIXELMIRROR_OUTBOX", f"sqlite:///{path}")
    assert main(command) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(path) in line
    assert not path.parent.exists()


@pytest.mark.parametrize(
    "command", [["outbox", "stats"], ["outbox", "replay-dead"]], ids=["stats", "replay-dead"]
)
def test_inspecting_a_sqlite_outbox_that_does_not_exist_says_so_and_creates_none(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: list[str],
) -> None:
    path = tmp_path / "typo.db"
    monkeypatch.setenv("PIXELMIRROR_OUTBOX", f"sqlite:///{path}")
    assert main(command) == 2
    assert "no such file" in _one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_the_installed_command_reports_an_unreachable_redis_in_one_line(
    env: dict[str, str], closed_port: int
) -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{closed_port}/0"
    done = subprocess.run(
        [sys.executable, "-m", "pixelmirror.cli", "outbox", "stats"],
        env={**os.environ, **env, "PIXELMIRROR_OUTBOX": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert line.startswith(f"pixelmirror: outbox redis://:***@127.0.0.1:{closed_port}/0 ")
    assert "s3cret-pw" not in done.stderr


# --------------------------------------------------------------------------------------------
# replay-dead --dry-run


def _mirror_on(
    store: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> PixelMirror:
    """A mirror that only queues, on the test's SQLite file or (``store`` "redis") on a
    fresh stream of the real server."""
    if store == "redis":
        stream = request.getfixturevalue("stream")
        monkeypatch.setenv("PIXELMIRROR_OUTBOX", redisutil.outbox_url(stream))
    return PixelMirror(dispatch="external", transport=FakeGraphAPI().transport)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_replay_dead_dry_run_counts_by_pixel_and_reason_and_replays_nothing(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    store: str,
) -> None:
    mirror = _mirror_on(store, monkeypatch, request)
    for pixel in ("111", "111", "111", "222"):
        mirror.send(
            "Lead",
            pixel_id=pixel,
            action_source="system_generated",
            user_data={"external_id": "a"},
            wait=5,
        )
    buried: Counter[tuple[str, str]] = Counter()
    while claims := mirror.outbox.claim(1, lease=60):
        pixel = claims[0].event.pixel_id
        reason = "invalid" if pixel == "111" and buried[(pixel, "invalid")] < 2 else "expired"
        mirror.outbox.bury(claims, reason)
        buried[(pixel, reason)] += 1
    mirror.close(timeout=0)
    assert buried == {("111", "invalid"): 2, ("111", "expired"): 1, ("222", "expired"): 1}

    assert main(["outbox", "replay-dead", "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["dry_run"], report["would_replay"], report["sampled"]) == (True, 4, 4)
    assert {
        (group["pixel_id"], group["reason"]): group["count"]
        for group in report["by_pixel_and_reason"]
    } == buried
    assert report["by_pixel_and_reason"][0]["count"] == 2  # the biggest group first

    assert main(["outbox", "stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["pending"], stats["dead"]) == (0, 4)


def _bury_mixed_letters(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, store: str
) -> None:
    """Dead letters: pixel 111 twice "Invalid parameter" and once "token_expired", pixel
    222 once "invalid parameter"."""
    mirror = _mirror_on(store, monkeypatch, request)
    letters = [
        ("111", "Invalid parameter"),
        ("111", "token_expired"),
        ("111", "Invalid parameter"),
        ("222", "invalid parameter"),
    ]
    for pixel, _ in letters:
        mirror.send(
            "Lead",
            pixel_id=pixel,
            action_source="system_generated",
            user_data={"external_id": "a"},
            wait=5,
        )
    for _, reason in letters:
        mirror.outbox.bury(mirror.outbox.claim(1, lease=60), reason)
    mirror.close(timeout=0)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_replay_dead_filters_by_pixel_and_reason_in_the_dry_run_and_the_replay(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    store: str,
) -> None:
    _bury_mixed_letters(monkeypatch, request, store)
    chosen = ["--pixel", "111", "--reason", "INVALID PARAM"]
    filters = {"pixel_id": "111", "reason": "INVALID PARAM"}

    assert main(["outbox", "replay-dead", "--dry-run", *chosen]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["filters"], report["would_replay"], report["sampled"]) == (filters, 2, 2)
    assert report["by_pixel_and_reason"] == [
        {"pixel_id": "111", "reason": "Invalid parameter", "count": 2}
    ]

    assert main(["outbox", "replay-dead", "--reason", "_"]) == 0  # "_" taken literally
    out, err = capsys.readouterr()
    assert json.loads(out)["replayed"] == 1
    assert err == ""  # not a terminal: no progress line

    assert main(["outbox", "replay-dead", *chosen]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["filters"], result["replayed"]) == (filters, 2)
    assert main(["outbox", "stats", "--dead", "5"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["pending"], stats["dead"]) == (3, 1)
    assert [(d["pixel_id"], d["reason"]) for d in stats["dead_letters"]] == [
        ("222", "invalid parameter")
    ]


def test_replay_dead_on_a_terminal_shows_one_updating_progress_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    PixelMirror(dispatch="external").close(timeout=0)  # creates the outbox file
    with sqlite3.connect(tmp_path / "outbox.db") as conn:
        conn.executemany(
            "INSERT INTO dead (pixel_id, event_id, event_name, event_time, action_source,"
            " payload, attempts, reason, died_at) VALUES (?, ?, 'Lead', 0, 'website', x'', 1,"
            " 'rejected', 0)",
            [("7" if n % 3 else "8", f"e{n}") for n in range(6000)],
        )
    # stderr on a pseudo-terminal, stdout a pipe: the progress goes to the one watched.
    terminal, child_side = os.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pixelmirror.cli", "outbox", "replay-dead", "--pixel", "7"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=child_side,
            text=True,
            timeout=60,
        )
        os.close(child_side)
        shown = b""
        with contextlib.suppress(OSError):  # EIO: the child side is closed, all read
            while chunk := os.read(terminal, 4096):
                shown += chunk
    finally:
        os.close(terminal)
    assert done.returncode == 0
    assert json.loads(done.stdout)["replayed"] == 4000
    # An update per chunk of 2000 letters looked at, 2 in 3 of them pixel 7's; one newline.
    updates = shown.decode().replace("\r\n", "\n").split("\r")
    assert updates[0] == ""
    assert updates[1:] == [
        "replayed 1333 of 4000",
        "replayed 2666 of 4000",
        "replayed 4000 of 4000\n",
    ]


# --------------------------------------------------------------------------------------------
# fake-graph


def test_fake_graph_serves_other_processes_and_prints_what_it_accepted(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = subprocess.Popen(
        [sys.executable, "-m", "pixelmirror.cli", "fake-graph", "--port", "0", "--token", TOKEN],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stderr is not None
        assert fake.stdout is not None
        banner = fake.stderr.readline()  # blocks until the server is up
        assert banner.startswith("FakeGraphAPI listening on http://127.0.0.1:")
        monkeypatch.setenv("PIXELMIRROR_GRAPH_URL", banner.split()[-1])
        assert main(["check", "--test-event-code", "TEST7"]) == 0
        accepted = json.loads(fake.stdout.readline())
        monkeypatch.setenv("PIXELMIRROR_ACCESS_TOKEN", "EAA-not-known-there")
        assert main(["check"]) == 1
    finally:
        fake.send_signal(signal.SIGINT)
        fake.communicate(timeout=30)
    assert fake.returncode == 0
    assert accepted["pixel_id"] == PIXEL
    assert accepted["test_event_code"] == "TEST7"
    assert accepted["event"]["event_name"] == "PixelMirrorCheck"


def test_check_tests_meta_even_when_the_outbox_cannot_be_opened(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("PIXELMIRROR_OUTBOX", f"sqlite:///{tmp_path / 'missing' / 'outbox.db'}")
    fake = FakeGraphAPI(access_tokens={TOKEN})
    with fake.serve() as url:
        monkeypatch.setenv("PIXELMIRROR_GRAPH_URL", url)
        assert main(["check"]) == 0
    assert json.loads(capsys.readouterr().out)["events_received"] == 1

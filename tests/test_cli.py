from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pixelmirror import PixelMirror
from pixelmirror.cli import main
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


def test_check_dry_run_prints_the_event_and_succeeds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIXELMIRROR_PIXEL_ID", PIXEL)
    monkeypatch.delenv("PIXELMIRROR_ACCESS_TOKEN", raising=False)
    assert main(["check"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["dry_run"], result["pixel_id"]) == (True, True, PIXEL)
    assert "PixelMirrorCheck" in result["messages"][0]


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

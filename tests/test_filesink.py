"""The file sink: Meta's request bodies, without the token, one JSONL line per batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import PIXEL, SECRET, TOKEN, lead
from pixelmirror import PixelMirror
from pixelmirror.config import Config, ConfigError
from pixelmirror.delivery import open_sinks
from pixelmirror.delivery.dispatcher import Dispatcher
from pixelmirror.delivery.errors import TransientError
from pixelmirror.delivery.filesink import FileSink
from pixelmirror.delivery.graph import GraphClient
from pixelmirror.events import BatchKey
from pixelmirror.outbox.memory import MemoryOutbox


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def drain(dispatcher: Dispatcher) -> None:
    while dispatcher.deliver_next():
        pass


@pytest.mark.parametrize("test_event_code", [None, "TEST42"])
@pytest.mark.parametrize("partner_agent", [None, "shopkit"])
@pytest.mark.parametrize("app_secret", [None, "app-secret"])
def test_the_line_holds_graphs_body_byte_for_byte_without_the_credentials(
    tmp_path: Path, test_event_code: str | None, partner_agent: str | None, app_secret: str | None
) -> None:
    posted: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        posted.append(request.content)
        return httpx.Response(200, json={"events_received": 2})

    payloads = [lead(PIXEL).payload, lead(PIXEL, custom_data={"note": "ünïcode\nline"}).payload]
    key = BatchKey("meta", PIXEL, test_event_code)
    graph = GraphClient(
        TOKEN,
        app_secret=app_secret,
        partner_agent=partner_agent,
        transport=httpx.MockTransport(answer),
    )
    graph.deliver(key, payloads)
    sink = FileSink(str(tmp_path / "audit.jsonl"), partner_agent=partner_agent)
    assert sink.deliver(key, payloads).count == 2

    raw = (tmp_path / "audit.jsonl").read_bytes()
    assert raw.count(b"\n") == 1
    assert raw.endswith(b"\n")
    assert TOKEN.encode() not in raw
    (line,) = lines(tmp_path / "audit.jsonl")
    assert (line["destination"], line["pixel_id"]) == ("meta", PIXEL)
    sent = json.loads(posted[0])
    assert sent.pop("access_token") == TOKEN
    assert ("appsecret_proof" in sent) is (app_secret is not None)
    sent.pop("appsecret_proof", None)
    assert line["body"] == sent
    # The events' bytes as Graph gets them, not re-encoded: the same "data" array.
    data = b'{"data":[' + b",".join(payloads) + b"]"
    assert posted[0].startswith(data)
    assert raw.startswith(
        b'{"destination":"meta","pixel_id":"%s","body":%s' % (PIXEL.encode(), data)
    )


def test_a_failed_write_is_transient(tmp_path: Path) -> None:
    sink = FileSink(str(tmp_path / "missing" / "audit.jsonl"))
    with pytest.raises(TransientError, match="could not write"):
        sink.deliver(BatchKey("meta", PIXEL, None), [lead(PIXEL).payload])


def test_the_dispatcher_writes_one_line_per_batch_and_counts_like_meta(tmp_path: Path) -> None:
    outbox = MemoryOutbox()
    path = tmp_path / "audit.jsonl"
    dispatcher = Dispatcher(outbox, FileSink(str(path)), batch_size=3)
    events = [lead(PIXEL) for _ in range(5)] + [lead("222"), lead(PIXEL, test_event_code="T1")]
    outbox.put(events)

    drain(dispatcher)

    written = lines(path)
    batches = sorted(
        (line["pixel_id"], line["body"].get("test_event_code") or "", len(line["body"]["data"]))
        for line in written
    )
    assert batches == [(PIXEL, "", 2), (PIXEL, "", 3), (PIXEL, "T1", 1), ("222", "", 1)]
    sent_ids = [event["event_id"] for line in written for event in line["body"]["data"]]
    assert sorted(sent_ids) == sorted(e.event_id for e in events)
    assert dispatcher.counts.sent == 7
    assert outbox.counts().unfinished == 0


def test_a_failing_write_is_retried_until_the_file_can_be_written(tmp_path: Path) -> None:
    outbox = MemoryOutbox()
    path = tmp_path / "logs" / "audit.jsonl"  # its directory does not exist yet
    dispatcher = Dispatcher(outbox, FileSink(str(path)), retry_backoff=0.01, retry_backoff_max=0.02)
    events = [lead(PIXEL), lead(PIXEL)]
    outbox.put(events)

    assert dispatcher.deliver_next()
    assert (dispatcher.counts.sent, dispatcher.counts.retried) == (0, 2)
    assert outbox.counts().pending == 2

    path.parent.mkdir()
    dispatcher.start()
    try:
        assert dispatcher.flush(timeout=10)
    finally:
        dispatcher.stop(timeout=5)
    (line,) = lines(path)
    assert [event["event_id"] for event in line["body"]["data"]] == [e.event_id for e in events]
    assert (dispatcher.counts.sent, dispatcher.counts.retried) == (2, 2)


def test_the_mirror_sends_to_the_file_without_a_token(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    mirror = PixelMirror(
        pixel_id=PIXEL,
        secret_key=SECRET,
        sink=f"file://{path}",
        partner_agent="shopkit",
        flush_interval=0.05,
    )
    try:
        assert not mirror.dry_run
        ids = [
            mirror.send("Lead", action_source="system_generated", user_data={"external_id": n})
            for n in ("a", "b", "c")
        ]
        assert mirror.flush(timeout=10)
        stats = mirror.stats()
    finally:
        mirror.close(timeout=1)
    written = lines(path)
    assert [e["event_id"] for line in written for e in line["body"]["data"]] == ids
    assert {line["body"]["partner_agent"] for line in written} == {"shopkit"}
    assert (stats.queued, stats.sent, stats.pending, stats.dry_run) == (3, 3, 0, 0)


def test_a_check_writes_its_event_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    mirror = PixelMirror(pixel_id=PIXEL, sink=f"file://{path}", dispatch="external")
    try:
        result = mirror.check(test_event_code="TEST9")
    finally:
        mirror.close(timeout=0)
    assert (result.ok, result.dry_run, result.events_received) == (True, False, 1)
    (line,) = lines(path)
    assert line["body"]["data"][0]["event_name"] == "PixelMirrorCheck"
    assert line["body"]["test_event_code"] == "TEST9"


def test_the_sink_setting_picks_the_file_for_metas_events(tmp_path: Path) -> None:
    config = Config.from_env({}, sink=f"file://{tmp_path}/a.jsonl", access_token=TOKEN)
    (sink,) = open_sinks(config).values()
    assert isinstance(sink, FileSink)
    assert sink.path == f"{tmp_path}/a.jsonl"
    assert not Config.from_env({}, sink=f"file://{tmp_path}/a.jsonl").dry_run
    graph = open_sinks(Config.from_env({}, access_token=TOKEN))["meta"]
    assert isinstance(graph, GraphClient)
    graph.close()


@pytest.mark.parametrize("url", ["file://host/a.jsonl", "/var/log/a.jsonl", "s3://bucket/a"])
def test_a_bad_sink_url_fails_at_start_up(url: str) -> None:
    with pytest.raises(ConfigError, match=r"PIXELMIRROR_SINK must be file:///path\.jsonl"):
        Config.from_env({}, sink=url)

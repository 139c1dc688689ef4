"""Prometheus metrics, health and match quality: scraped over HTTP from a running worker,
and registered on an app's own registry."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import PIXEL, TOKEN, MakeMirror
from pixelmirror.cli import main
from pixelmirror.delivery.dispatcher import Dispatcher
from pixelmirror.delivery.tally import MatchQuality
from pixelmirror.events import ServerEvent
from pixelmirror.metrics import MetricsServer, PixelMirrorCollector, health
from pixelmirror.mirror import PixelMirror
from pixelmirror.outbox import open_outbox
from pixelmirror.testing import FakeGraphAPI
from waiting import wait_until

WEB = {"client_ip_address": "203.0.113.9", "client_user_agent": "Mozilla/5.0 (X11)"}

WORKER = (sys.executable, "-m", "pixelmirror.cli", "worker")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def send_the_shop_events(mirror: PixelMirror, *, wait: bool = False) -> None:
    """Three good purchases, one without email or phone, a PageView from an ad click
    (fbclid in the URL) without fbc and without an IP address."""
    for n in range(3):
        mirror.send(
            "Purchase",
            action_source="website",
            user_data={"email": f"ann{n}@example.com", "external_id": str(n), **WEB},
            custom_data={"currency": "EUR", "value": 10},
            event_source_url="https://shop.example/thanks",
            wait=wait,
        )
    mirror.send(
        "Purchase",
        action_source="website",
        user_data={"external_id": "guest", **WEB},
        custom_data={"currency": "EUR", "value": 10},
        event_source_url="https://shop.example/thanks",
        wait=wait,
    )
    mirror.send(
        "PageView",
        action_source="website",
        event_source_url="https://shop.example/?fbclid=IwAR2abc",
        user_data={"client_user_agent": "Mozilla/5.0 (X11)", "external_id": "v1"},
        wait=wait,
    )


@pytest.fixture
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_worker_serves_metrics_and_health_that_count_what_it_delivered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, free_port: int
) -> None:
    env = {
        "PIXELMIRROR_PIXEL_ID": PIXEL,
        "PIXELMIRROR_ACCESS_TOKEN": TOKEN,
        "PIXELMIRROR_OUTBOX": f"sqlite:///{tmp_path / 'outbox.db'}",
        "PIXELMIRROR_FLUSH_INTERVAL": "0.05",
        "PIXELMIRROR_RETRY_BACKOFF": "0.01",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fake = FakeGraphAPI(access_tokens={TOKEN})
    fake.fail_next(500)  # the first batch is retried once
    with fake.serve() as url:
        web = PixelMirror(dispatch="external")
        send_the_shop_events(web, wait=True)
        web.close(timeout=0)
        worker = subprocess.Popen(
            [*WORKER, "--metrics-port", str(free_port), "--metrics-host", "127.0.0.1"],
            env={**os.environ, **env, "PIXELMIRROR_GRAPH_URL": url},
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{free_port}"
        try:
            assert fake.wait_for(5, timeout=30)

            def scrape() -> Samples:
                try:
                    return samples(httpx.get(f"{base}/metrics").text)
                except httpx.TransportError:  # not listening yet
                    return {}

            wait_until(
                lambda: scrape().get(("pixelmirror_events_sent_total", (("pixel", PIXEL),))) == 5,
                timeout=30,
                what="the worker's metrics to count 5 sent events",
            )
            metrics = scrape()
            healthz = httpx.get(f"{base}/healthz")
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=30)
    assert worker.returncode == 0
    pixel = (("pixel", PIXEL),)
    assert metrics[("pixelmirror_events_retried_total", pixel)] == 5
    assert metrics[("pixelmirror_delivery_errors_total", (("class", "transient"), *pixel))] == 1
    assert metrics[("pixelmirror_outbox_up", ())] == 1
    assert metrics[("pixelmirror_outbox_pending", ())] == 0
    assert metrics[("pixelmirror_outbox_in_flight", ())] == 0
    assert metrics[("pixelmirror_paused_pixels", ())] == 0
    assert metrics[("pixelmirror_delivery_seconds_count", ())] == 2  # the refusal, the retry
    assert metrics[("pixelmirror_delivery_seconds_bucket", (("le", "+Inf"),))] == 2

    def match(name: str, event: str, **labels: str) -> float:
        key = tuple(sorted({"pixel": PIXEL, "event_name": event, **labels}.items()))
        return metrics[(name, key)]

    assert match("pixelmirror_match_events_total", "Purchase") == 4
    assert match("pixelmirror_match_key_events_total", "Purchase", key="em") == 3
    assert match("pixelmirror_match_key_share", "Purchase", key="em") == 0.75
    assert match("pixelmirror_match_key_share", "Purchase", key="client_ip_address") == 1
    assert (
        match("pixelmirror_match_faults_total", "Purchase", fault="purchase_without_email_or_phone")
        == 1
    )
    assert match("pixelmirror_match_faults_total", "PageView", fault="fbclid_without_fbc") == 1
    assert match("pixelmirror_match_faults_total", "PageView", fault="website_without_ip") == 1
    assert healthz.status_code == 200
    assert healthz.text.strip() == "ok"


def test_health_is_503_and_the_scrape_says_outbox_down_when_redis_is_unreachable(
    closed_port: int,
) -> None:
    outbox = open_outbox(f"redis://127.0.0.1:{closed_port}/0", max_events=100)
    dispatcher = Dispatcher(outbox, {}, flush_interval=0.05)
    registry = CollectorRegistry()
    registry.register(PixelMirrorCollector(outbox, lambda: dispatcher))
    dispatcher.start()
    server = MetricsServer(registry, lambda: health(outbox, dispatcher), host="127.0.0.1")
    base = f"http://127.0.0.1:{server.port}"
    try:
        down = httpx.get(f"{base}/healthz")
        scrape = httpx.get(f"{base}/metrics")
        dispatcher.stop(timeout=5)
        stopped = httpx.get(f"{base}/healthz")
    finally:
        dispatcher.stop(timeout=5)
        server.close()
        outbox.close()
    assert down.status_code == 503
    assert "outbox" in down.text
    assert "unreachable" in down.text
    assert scrape.status_code == 200
    assert samples(scrape.text)[("pixelmirror_outbox_up", ())] == 0
    assert stopped.status_code == 503
    assert "dispatcher is not running" in stopped.text


def test_an_app_registers_its_mirror_on_its_own_registry_and_can_fold_the_pixels(
    make_mirror: MakeMirror, fake: FakeGraphAPI
) -> None:
    mirror = make_mirror()
    per_pixel, folded = CollectorRegistry(), CollectorRegistry()
    mirror.metrics(per_pixel)
    mirror.metrics(folded, per_pixel=False)
    send_the_shop_events(mirror)
    mirror.send(
        "Lead", pixel_id="999", action_source="system_generated", user_data={"ph": "+4915112345678"}
    )
    assert mirror.flush(timeout=10)
    by_pixel = samples(generate_latest(per_pixel).decode())
    together = samples(generate_latest(folded).decode())
    assert by_pixel[("pixelmirror_events_sent_total", (("pixel", PIXEL),))] == 5
    assert by_pixel[("pixelmirror_events_sent_total", (("pixel", "999"),))] == 1
    assert by_pixel[("pixelmirror_events_queued_total", (("pixel", "999"),))] == 1
    assert together[("pixelmirror_events_sent_total", ())] == 6
    assert together[("pixelmirror_events_queued_total", ())] == 6
    assert together[("pixelmirror_match_events_total", (("event_name", "Purchase"),))] == 4
    assert not [labels for (_, labels) in together if "pixel" in dict(labels)]
    assert together[("pixelmirror_outbox_up", ())] == 1


def test_stats_show_the_match_quality_of_the_sent_events_as_shares_and_faults(
    make_mirror: MakeMirror, fake: FakeGraphAPI
) -> None:
    mirror = make_mirror()
    send_the_shop_events(mirror)
    assert mirror.flush(timeout=10)
    quality = mirror.stats().match_quality[PIXEL]
    assert quality["Purchase"]["events"] == 4
    assert quality["Purchase"]["keys"]["em"] == 0.75
    assert quality["Purchase"]["keys"]["external_id"] == 1
    assert quality["Purchase"]["faults"] == {"purchase_without_email_or_phone": 1}
    assert quality["PageView"] == {
        "events": 1,
        "keys": {"client_user_agent": 1.0, "external_id": 1.0},
        "faults": {"fbclid_without_fbc": 1, "website_without_ip": 1},
    }
    # Counts only: no value of the user data is kept.
    assert "ann0@example.com" not in repr(mirror.stats())
    assert "203.0.113.9" not in repr(mirror.stats())


def test_a_worker_whose_metrics_port_is_taken_says_so_in_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIXELMIRROR_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("PIXELMIRROR_OUTBOX", f"sqlite:///{tmp_path / 'outbox.db'}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["worker", "--metrics-port", str(port), "--metrics-host", "127.0.0.1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"pixelmirror: --metrics-port {port}: cannot listen on 127.0.0.1")
    assert len(err.splitlines()) == 1


def test_match_quality_counts_the_same_from_a_carried_signature_as_from_the_payload() -> None:
    """An event made here carries its signature; one rebuilt from storage is parsed. Random
    events must count alike both ways."""
    rng = random.Random(12)
    contact = {
        "em": "ann@example.com",
        "ph": "+4915112345678",
        "fn": "Ann",
        "external_id": "c-1",
        "client_ip_address": "203.0.113.9",
        "fbc": "fb.1.1700000000000.IwAR2abc",
        "fbp": "fb.1.1700000000000.123",
    }
    made, rebuilt = MatchQuality(), MatchQuality()
    for _ in range(300):
        source = rng.choice(["website", "app", "system_generated"])
        user_data = {k: v for k, v in contact.items() if rng.random() < 0.5}
        user_data.setdefault("external_id", "c-2")
        if source == "website":
            user_data["client_user_agent"] = "Mozilla/5.0 (X11)"
        url = rng.choice(["https://shop.example/", "https://shop.example/?fbclid=IwAR2", None])
        if source == "website" and url is None:
            url = "https://shop.example/p"
        name = rng.choice(["Purchase", "Lead", "PageView", "Custom Thing"])
        event = ServerEvent.create(
            name,
            pixel_id=rng.choice([PIXEL, "999"]),
            action_source=source,
            user_data=user_data,
            custom_data={"currency": "EUR", "value": 1},
            event_source_url=url,
        )
        assert event.match is not None
        made.count(event.pixel_id, [event])
        rebuilt.count(event.pixel_id, [replace(event, match=None)])
    assert made.counts() == rebuilt.counts()
    assert made.shares() == rebuilt.shares()

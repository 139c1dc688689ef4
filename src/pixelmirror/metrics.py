"""Prometheus metrics and a health check (the ``pixelmirror[prometheus]`` extra).

:class:`PixelMirrorCollector` reads the counts the mirror and its dispatcher keep anyway, at
scrape time: nothing is incremented on the request path for it. The outbox is asked then
too; an outbox that does not answer shows as ``pixelmirror_outbox_up 0``, never as a failed
scrape. ``per_pixel=False`` folds the ``pixel`` label away, for platforms with thousands of
pixels.

:class:`MetricsServer` serves ``/metrics`` and ``/healthz`` for ``pixelmirror worker
--metrics-port``.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pixelmirror.delivery.dispatcher import DeliveryCounts, Dispatcher
from pixelmirror.outbox import Outbox

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger("pixelmirror.metrics")

Labels = tuple[str, ...]

#: The refusal classes a dispatcher counts, as the ``class`` label says them.
ERROR_CLASSES = ("transient", "access", "request", "invalid")


class PixelMirrorCollector(Collector):
    """The metrics of one process: what it queued and dropped, what its dispatcher sent,
    retried, dead-lettered and how long each batch took, its paused pixels, the match
    quality of what it sent, and the outbox's counts (shared by every process)."""

    def __init__(
        self,
        outbox: Outbox,
        dispatcher: Callable[[], Dispatcher | None],
        *,
        queued: Callable[[], Mapping[str, int]] = dict,
        dropped: Callable[[], int] | None = None,
        per_pixel: bool = True,
    ) -> None:
        self.outbox = outbox
        self.dispatcher = dispatcher
        self.queued = queued
        self.dropped = dropped or (lambda: outbox.dropped)
        self.per_pixel = per_pixel

    def collect(self) -> Iterator[Metric]:
        dispatcher = self.dispatcher()
        by_pixel = dict(dispatcher.pixel_counts) if dispatcher else {}
        yield self._counter(
            "pixelmirror_events_queued",
            "Events this process handed to the outbox.",
            {(pixel,): n for pixel, n in self.queued().items()},
        )
        for name, doc in (
            ("sent", "Events Meta accepted, through this process's dispatcher."),
            ("retried", "Failed attempts this process's dispatcher rescheduled."),
            ("dead", "Events this process's dispatcher dead-lettered."),
        ):
            yield self._counter(
                f"pixelmirror_events_{name}",
                doc,
                {(pixel,): getattr(counts, name) for pixel, counts in by_pixel.items()},
            )
        yield CounterMetricFamily(
            "pixelmirror_events_dropped",
            "Events this process could not enqueue (handoff or outbox full, not stored).",
            value=self.dropped(),
        )
        yield self._counter(
            "pixelmirror_delivery_errors",
            "Refused deliveries (one per answer) by class: transient, access, request, invalid.",
            _errors(by_pixel),
            ("class",),
        )
        yield from self._outbox()
        paused = dispatcher.paused_pixels if dispatcher else ()
        yield GaugeMetricFamily(
            "pixelmirror_paused_pixels",
            "Pixels this process holds back after Meta refused their token or request.",
            value=len(paused),
        )
        if self.per_pixel:
            gauge = GaugeMetricFamily(
                "pixelmirror_pixel_paused",
                "1 while this process holds the pixel back.",
                labels=["pixel"],
            )
            for pixel in paused:
                gauge.add_metric([pixel], 1)
            yield gauge
        if dispatcher is not None:
            yield _histogram(dispatcher)
            yield from self._match_quality(dispatcher)

    def _outbox(self) -> Iterator[Metric]:
        try:
            counts = self.outbox.counts()
            unfinished = self.outbox.unfinished_by_pixel() if self.per_pixel else {}
        except Exception as exc:  # a scrape must report the outage, not fail with it
            logger.debug("outbox %s unavailable for metrics: %s", self.outbox.url, exc)
            yield GaugeMetricFamily("pixelmirror_outbox_up", "1 if the outbox answers.", value=0)
            return
        yield GaugeMetricFamily("pixelmirror_outbox_up", "1 if the outbox answers.", value=1)
        yield GaugeMetricFamily(
            "pixelmirror_outbox_pending", "Events waiting in the outbox.", value=counts.pending
        )
        yield GaugeMetricFamily(
            "pixelmirror_outbox_in_flight", "Events claimed by a sender.", value=counts.in_flight
        )
        yield GaugeMetricFamily(
            "pixelmirror_outbox_dead", "Dead letters in the outbox.", value=counts.dead
        )
        if self.per_pixel:
            gauge = GaugeMetricFamily(
                "pixelmirror_outbox_unfinished",
                "Events pending or in flight in the outbox, by pixel.",
                labels=["pixel"],
            )
            for pixel, n in sorted(unfinished.items()):
                gauge.add_metric([pixel], n)
            yield gauge

    def _match_quality(self, dispatcher: Dispatcher) -> Iterator[Metric]:
        counts = dispatcher.quality.counts()
        events: dict[Labels, float] = {key: c.events for key, c in counts.items()}
        keys: dict[Labels, float] = {
            (*key, k): n for key, c in counts.items() for k, n in c.keys.items()
        }
        faults: dict[Labels, float] = {
            (*key, f): n for key, c in counts.items() for f, n in c.faults.items()
        }
        yield self._counter(
            "pixelmirror_match_events",
            "Delivered events, by event name: the base of the key shares.",
            events,
            ("event_name",),
        )
        yield self._counter(
            "pixelmirror_match_key_events",
            "Delivered events that carried a user_data key (em, ph, fbc, ...).",
            keys,
            ("event_name", "key"),
        )
        yield self._counter(
            "pixelmirror_match_faults",
            "Delivered events with a match fault (a Purchase without em or ph, ...).",
            faults,
            ("event_name", "fault"),
        )
        totals = self._fold(events)
        share = GaugeMetricFamily(
            "pixelmirror_match_key_share",
            "Share of the delivered events that carried a user_data key.",
            labels=[*self._pixel, "event_name", "key"],
        )
        for labels, n in sorted(self._fold(keys).items()):
            share.add_metric(list(labels), n / totals[labels[:-1]])
        yield share

    @property
    def _pixel(self) -> list[str]:
        return ["pixel"] if self.per_pixel else []

    def _fold(self, values: Mapping[Labels, float]) -> dict[Labels, float]:
        """Values keyed by labels that start with the pixel; without the pixel when folded."""
        if self.per_pixel:
            return dict(values)
        folded: dict[Labels, float] = defaultdict(float)
        for labels, value in values.items():
            folded[labels[1:]] += value
        return folded

    def _counter(
        self, name: str, doc: str, values: Mapping[Labels, float], labels: Labels = ()
    ) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=[*self._pixel, *labels])
        for key, value in sorted(self._fold(values).items()):
            family.add_metric(list(key), value)
        return family


def _errors(by_pixel: Mapping[str, DeliveryCounts]) -> dict[Labels, float]:
    return {
        (pixel, name): getattr(counts, name)
        for pixel, counts in by_pixel.items()
        for name in ERROR_CLASSES
        if getattr(counts, name)
    }


def _histogram(dispatcher: Dispatcher) -> HistogramMetricFamily:
    buckets, total = dispatcher.latency.snapshot()
    return HistogramMetricFamily(
        "pixelmirror_delivery_seconds",
        "Time each batch took its destination (Meta's Conversions API) to answer.",
        buckets=[("+Inf" if bound == float("inf") else repr(bound), n) for bound, n in buckets],
        sum_value=total,
    )


class Observed(Protocol):
    """What the collector reads of a :class:`~pixelmirror.mirror.PixelMirror`."""

    outbox: Outbox
    dispatcher: Dispatcher | None

    def queued_by_pixel(self) -> dict[str, int]: ...

    @property
    def dropped(self) -> int: ...


def register_metrics(
    mirror: Observed, registry: CollectorRegistry | None = None, *, per_pixel: bool = True
) -> PixelMirrorCollector:
    """Register ``mirror``'s collector on ``registry`` (default: the global one)."""
    collector = PixelMirrorCollector(
        mirror.outbox,
        lambda: mirror.dispatcher,  # a forked child gets a dispatcher of its own
        queued=mirror.queued_by_pixel,
        dropped=lambda: mirror.dropped,
        per_pixel=per_pixel,
    )
    (REGISTRY if registry is None else registry).register(collector)
    return collector


def health(outbox: Outbox, dispatcher: Dispatcher) -> tuple[bool, str]:
    """Healthy: the outbox answers and the dispatcher's threads run; else the reason."""
    if not dispatcher.running:
        return False, "the dispatcher is not running"
    try:
        outbox.counts()
    except Exception as exc:
        return False, f"the outbox {outbox.url} is unreachable: {type(exc).__name__}"
    return True, "ok"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


class MetricsServer:
    """``/metrics`` (``registry``) and ``/healthz`` (200 or 503 with the reason) over HTTP,
    served by a daemon thread until :meth:`close`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        check: Callable[[], tuple[bool, str]],
        *,
        host: str = "0.0.0.0",
        port: int = 0,
    ) -> None:
        self.registry = registry
        self.check = check
        self._server = make_server(
            host, port, self._app, server_class=_Server, handler_class=_QuietHandler
        )
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="pixelmirror-metrics", daemon=True
        )
        self._thread.start()

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body = generate_latest(self.registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path == "/healthz":
            ok, reason = self.check()
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "text/plain; charset=utf-8")],
            )
            return [reason.encode() + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""What a dispatcher observed, kept as plain counts: how long its sinks took to answer
(:class:`Latency`) and which customer-information keys the events it delivered carried
(:class:`MatchQuality`); and the fields its log lines carry about a batch (:func:`log_fields`).

Both are read at scrape time (``stats()``, the Prometheus collector); nothing here runs on
the request path. Match quality counts key names only, never values.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pixelmirror.delivery.errors import DeliveryError
from pixelmirror.events import MatchSignature, ServerEvent, match_signature
from pixelmirror.outbox.base import Claimed

#: Upper bounds (seconds) of the latency buckets: Graph answers in tens to hundreds of ms,
#: a slow or throttled one in seconds.
LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Latency:
    """A histogram of sink answer times, in :data:`LATENCY_BUCKETS`."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last one: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        slot = bisect.bisect_left(self.buckets, seconds)
        with self._lock:
            self._counts[slot] += 1
            self._sum += seconds

    def snapshot(self) -> tuple[list[tuple[float, int]], float]:
        """Cumulative counts by upper bound (``inf`` last) and the sum of all times."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return cumulative, total


@dataclass
class KeyCounts:
    """Delivered events of one pixel and event name, with the keys they carried."""

    events: int = 0
    keys: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)

    def shares(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "keys": {key: n / self.events for key, n in sorted(self.keys.items())},
            "faults": dict(sorted(self.faults.items())),
        }


class MatchQuality:
    """Per pixel and event name: how many delivered events carried each ``user_data`` key,
    and how many had one of :data:`~pixelmirror.meta.MATCH_FAULTS`.

    Counted on the dispatcher's thread after Meta accepted the events, by their
    :class:`~pixelmirror.events.MatchSignature`: an event made in this process carries it,
    a durable outbox stores it with the event and gives it back; one stored without it (by
    an older version) has its payload parsed (some microseconds). The request path pays
    nothing and a worker counts what the web processes built.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], KeyCounts] = {}
        self._lock = threading.Lock()

    def count(self, pixel_id: str, events: Iterable[ServerEvent]) -> None:
        # A batch holds a few signatures many times over: count each once, then add.
        seen = Counter(event.match or _signature_of(event.payload) for event in events)
        with self._lock:
            for signature, n in seen.items():
                if signature is None:
                    continue
                counts = self._counts.setdefault((pixel_id, signature.event_name), KeyCounts())
                counts.events += n
                for key in signature.keys:
                    counts.keys[key] += n
                for fault in signature.faults:
                    counts.faults[fault] += n

    def counts(self) -> dict[tuple[str, str], KeyCounts]:
        """A copy of the counts by (pixel, event name)."""
        with self._lock:
            return {
                key: KeyCounts(c.events, Counter(c.keys), Counter(c.faults))
                for key, c in self._counts.items()
            }

    def shares(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{pixel: {event_name: {"events": n, "keys": {key: share}, "faults": {...}}}}``."""
        report: dict[str, dict[str, dict[str, Any]]] = {}
        for (pixel_id, name), counts in sorted(self.counts().items()):
            report.setdefault(pixel_id, {})[name] = counts.shares()
        return report


def _signature_of(payload: bytes) -> MatchSignature | None:
    """The signature of a stored event's payload; None for one that is not an event we made."""
    try:
        event = json.loads(payload)
        name = str(event["event_name"])
        keys = dict.fromkeys(event.get("user_data") or ())
        return match_signature(
            name, keys, event.get("action_source"), event.get("event_source_url")
        )
    except (ValueError, KeyError, TypeError):
        return None


def log_fields(
    destination: str,
    pixel_id: str,
    claims: Sequence[Claimed],
    exc: DeliveryError | None = None,
) -> dict[str, object]:
    """The structured fields of a delivery log line (``extra=``): a log pipeline can group
    by pixel, event or error code without parsing the message. ``event_name`` is None when
    the batch mixes names, ``event_id`` when it holds more than one event."""
    names = {claim.event.event_name for claim in claims}
    return {
        "pixel": pixel_id,
        "destination": destination,
        "events": len(claims),
        "event_name": next(iter(names)) if len(names) == 1 else None,
        "event_id": claims[0].event.event_id if len(claims) == 1 else None,
        "error_code": None if exc is None else exc.code,
    }

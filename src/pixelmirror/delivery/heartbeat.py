"""The heartbeat that keeps the leases of the batches in flight while their sink answers."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator, Sequence

from pixelmirror.delivery.tally import log_fields
from pixelmirror.outbox.base import Claimed, Outbox

logger = logging.getLogger("pixelmirror.delivery")

#: Renewals per lease: two may fail or come late before another sender takes a batch over.
RENEWALS_PER_LEASE = 3


class Heartbeat:
    """Renews the leases of the batches in flight every third of the lease, from one thread.

    The thread starts with the first batch held and ends at the first beat that finds none,
    so an idle dispatcher (or one driven by hand through ``deliver_next``) keeps no thread.
    """

    def __init__(self, outbox: Outbox, lease: float) -> None:
        self.outbox = outbox
        self.lease = lease
        self.interval = lease / RENEWALS_PER_LEASE
        self._lock = threading.Lock()
        self._batches: dict[int, list[Claimed]] = {}
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def holding(self, claims: Sequence[Claimed]) -> Iterator[None]:
        """Keep renewing ``claims`` until the block ends (every claim answered or lost)."""
        key = next(self._keys)
        with self._lock:
            self._batches[key] = list(claims)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pixelmirror-heartbeat", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                del self._batches[key]

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                if not self._batches:
                    self._thread = None  # under the lock: the next batch starts a new thread
                    return
                batches = list(self._batches.items())
            for key, claims in batches:
                self._renew(key, claims)

    def _renew(self, key: int, claims: list[Claimed]) -> None:
        try:
            lost = self.outbox.renew(claims, lease=self.lease)
        except Exception:  # the outbox may be back by the next beat, before the lease ends
            logger.warning(
                "could not renew the lease of %d event(s) in flight; trying again in %.1fs",
                len(claims),
                self.interval,
                exc_info=True,
                extra=log_fields(claims[0].event.destination, claims[0].event.pixel_id, claims),
            )
            return
        if lost:
            # Answered already (a half of a split batch), or taken over after missed beats.
            gone = {claim.receipt for claim in lost}
            with self._lock:
                if key in self._batches:
                    self._batches[key] = [c for c in claims if c.receipt not in gone]

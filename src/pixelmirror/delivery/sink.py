"""The seam between the dispatcher and a destination: a :class:`Sink` takes one batch.

A sink is handed the events of one batch key (destination, pixel, test event code) as
the payload bytes made when each event was created, and either takes them all or raises
one of :mod:`pixelmirror.delivery.errors`' classes, which alone decide what the
dispatcher does next (retry, pause the pixel, split the batch). It never touches the
outbox, and may be called from several sender threads at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pixelmirror.events import BatchKey


@dataclass(frozen=True, slots=True)
class Delivered:
    """A destination took a batch."""

    #: Events the destination says it took.
    count: int
    #: The destination's id of the request, to quote to its support (Meta's fbtrace_id).
    trace_id: str | None = None
    #: Notes the destination sent back with its acceptance.
    messages: tuple[str, ...] = ()


class Sink(Protocol):
    """Delivers batches to one destination."""

    def deliver(self, key: BatchKey, payloads: Sequence[bytes]) -> Delivered:
        """Send one batch; raises a :class:`~pixelmirror.delivery.errors.DeliveryError`
        subclass unless the destination took it."""

    def fresh_credential(self, pixel_id: str) -> str | None:
        """Fingerprint of the credential a send for ``pixel_id`` would use now, asked past
        any cache; None when there is none (or the sink uses no credential). A pause for a
        refused credential ends when this names another one."""

    def close(self) -> None: ...

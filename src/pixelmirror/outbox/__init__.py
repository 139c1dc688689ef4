"""Outboxes: where events wait between the request and their destination.

:data:`OUTBOXES` is the one place an outbox registers: the URL schemes it opens, the form
shown in errors, and how to open it. Each outbox says itself whether it is ``durable``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pixelmirror.outbox.base import Claimed, DeadLetter, Outbox, OutboxCounts
from pixelmirror.outbox.memory import MemoryOutbox
from pixelmirror.urls import masked_url

__all__ = [
    "OUTBOXES",
    "Claimed",
    "DeadLetter",
    "MemoryOutbox",
    "Outbox",
    "OutboxCounts",
    "open_outbox",
]


@dataclass(frozen=True)
class OutboxKind:
    #: The URL form shown in errors, e.g. ``sqlite:///path.db``.
    form: str
    #: ``(url, max_events) -> Outbox``; ``max_events`` bounds an in-process outbox.
    open: Callable[[str, int], Outbox]


def _memory(url: str, max_events: int) -> Outbox:
    return MemoryOutbox(max_events=max_events)


def _sqlite(url: str, max_events: int) -> Outbox:
    from pixelmirror.outbox.sqlite import SQLiteOutbox

    return SQLiteOutbox.from_url(url)


def _redis(url: str, max_events: int) -> Outbox:
    try:
        from pixelmirror.outbox.redis import RedisOutbox
    except ImportError as exc:  # the optional dependency, not a bug of ours
        raise ImportError(
            f"the Redis outbox needs the redis client: pip install 'pixelmirror[redis]' ({exc})"
        ) from exc
    return RedisOutbox.from_url(url)


_REDIS = OutboxKind("redis://host:6379/0", _redis)

#: Outboxes by URL scheme.
OUTBOXES: dict[str, OutboxKind] = {
    "memory": OutboxKind("memory://", _memory),
    "sqlite": OutboxKind("sqlite:///path.db", _sqlite),
    "redis": _REDIS,
    "rediss": _REDIS,
}


def outbox_forms() -> str:
    """The registered URL forms, for messages: ``memory://, sqlite:///path.db or ...``."""
    forms = list(dict.fromkeys(kind.form for kind in OUTBOXES.values()))
    return ", ".join(forms[:-1]) + " or " + forms[-1]


def known_outbox(url: str) -> bool:
    scheme, separator, _ = url.partition("://")
    return bool(separator) and scheme in OUTBOXES


def open_outbox(url: str, *, max_events: int = 100_000) -> Outbox:
    """Open the outbox a ``PIXELMIRROR_OUTBOX`` URL names.

    ``memory://`` keeps up to ``max_events`` in this process; ``sqlite:///path.db`` is durable
    and shared by processes on one machine; ``redis://host:port/db`` is shared by a fleet.
    """
    kind = OUTBOXES.get(url.partition("://")[0]) if known_outbox(url) else None
    if kind is None:
        raise ValueError(f"PIXELMIRROR_OUTBOX must be {outbox_forms()}; got {masked_url(url)!r}")
    return kind.open(url, max_events)

"""Outboxes: where events wait between the request and Meta."""

from __future__ import annotations

from pixelmirror.config import masked_url
from pixelmirror.outbox.base import Claimed, DeadLetter, Outbox, OutboxCounts
from pixelmirror.outbox.memory import MemoryOutbox

__all__ = ["Claimed", "DeadLetter", "MemoryOutbox", "Outbox", "OutboxCounts", "open_outbox"]


def open_outbox(url: str, *, max_events: int = 100_000) -> Outbox:
    """Open the outbox a ``PIXELMIRROR_OUTBOX`` URL names.

    ``memory://`` keeps up to ``max_events`` in this process; ``sqlite:///path.db`` is durable
    and shared by processes on one machine; ``redis://host:port/db`` is shared by a fleet.
    """
    scheme = url.partition("://")[0]
    if scheme == "memory":
        return MemoryOutbox(max_events=max_events)
    if scheme == "sqlite":
        from pixelmirror.outbox.sqlite import SQLiteOutbox

        return SQLiteOutbox.from_url(url)
    if scheme in ("redis", "rediss"):
        try:
            from pixelmirror.outbox.redis import RedisOutbox
        except ImportError as exc:  # the optional dependency, not a bug of ours
            raise ImportError(
                f"the Redis outbox needs the redis client: pip install 'pixelmirror[redis]' ({exc})"
            ) from exc

        return RedisOutbox.from_url(url)
    raise ValueError(
        "PIXELMIRROR_OUTBOX must be memory://, sqlite:///path or redis://...; "
        f"got {masked_url(url)!r}"
    )

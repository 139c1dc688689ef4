"""Process-wide hooks for every live mirror: close at interpreter exit, and set up again in a
forked child (gunicorn ``--preload``)."""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from typing import Protocol

logger = logging.getLogger("pixelmirror")


class Live(Protocol):
    """What the hooks ask of a mirror."""

    def close(self, timeout: float | None = None) -> None: ...

    def _after_fork(self) -> None: ...


_live: weakref.WeakSet[Live] = weakref.WeakSet()


def register(mirror: Live) -> None:
    """Close ``mirror`` at exit and set it up again in forked children, until :func:`forget`."""
    _live.add(mirror)


def forget(mirror: Live) -> None:
    _live.discard(mirror)


def close_all() -> None:
    for mirror in list(_live):  # one failing mirror must not keep the rest open
        try:
            mirror.close()
        except Exception:
            logger.exception("closing %r at exit failed", mirror)


def _after_fork_in_child() -> None:
    for mirror in list(_live):
        mirror._after_fork()


atexit.register(close_all)
os.register_at_fork(after_in_child=_after_fork_in_child)

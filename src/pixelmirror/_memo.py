"""``Memo``: a function's answers kept by argument, for the few values a site repeats on
every request (header names, status lines)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(dict[K, V]):
    """``memo[key]`` is ``compute(key)``, kept after the first time while fewer than
    ``limit`` keys are: the keys come from the request (or the app), so what is kept is
    bounded, and a key past the bound is computed each time. A hit is a plain dict lookup."""

    __slots__ = ("_compute", "_limit")

    def __init__(self, compute: Callable[[K], V], limit: int = 512) -> None:
        super().__init__()
        self._compute = compute
        self._limit = limit

    def __missing__(self, key: K) -> V:
        value = self._compute(key)
        if len(self) < self._limit:
            self[key] = value
        return value

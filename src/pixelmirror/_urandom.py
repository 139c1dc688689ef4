"""Random values minted in batches, one ``os.urandom`` call per batch.

A first visit draws a visitor id and the ``_fbp`` random number; a system call per value
costs more than the value. ``list.pop`` is atomic, so threads need no lock. A forked child
(gunicorn's preloaded workers) starts with an empty pool: it would otherwise hand out the
very values its parent has left.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Pool"]

T = TypeVar("T")


class Pool(Generic[T]):
    """Values made by ``mint(raw)`` from ``size`` random bytes each, ``per_batch`` at a time.

    ``mint_all(raw)``, when given, makes a whole batch's values at once, the same as ``mint``
    of each ``size`` bytes in turn: a few calls over the batch instead of a few per value.
    """

    __slots__ = ("_batch", "_mint", "_mint_all", "_size", "_values")

    def __init__(
        self,
        mint: Callable[[bytes], T],
        *,
        size: int,
        per_batch: int = 256,
        mint_all: Callable[[bytes], list[T]] | None = None,
    ) -> None:
        self._mint = mint
        self._mint_all = mint_all
        self._size = size
        self._batch = size * per_batch
        self._values: list[T] = []
        os.register_at_fork(after_in_child=self._values.clear)

    def draw(self) -> T:
        try:
            return self._values.pop()
        except IndexError:
            self._values.extend(self._minted())
            return self._values.pop()

    def _minted(self) -> list[T]:
        raw, size, mint = os.urandom(self._batch), self._size, self._mint
        if self._mint_all is not None:
            return self._mint_all(raw)
        return [mint(raw[at : at + size]) for at in range(0, len(raw), size)]

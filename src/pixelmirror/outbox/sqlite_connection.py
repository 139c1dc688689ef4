"""The SQLite outbox's one connection: shared by a process's threads, safe across fork()."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator

from pixelmirror.outbox.sqlite_schema import ensure_schema

logger = logging.getLogger("pixelmirror.outbox")

#: Page size of a new outbox file, in bytes.
PAGE_SIZE = 16384

# Connections inherited over fork(): never used, and never closed either, since closing
# one in the child could disturb locks or the WAL the parent still holds.
_inherited: list[sqlite3.Connection] = []

# Open connections of this process. Before a fork each one's lock is taken, so no thread of
# ours is inside SQLite's C code at that instant: a mutex SQLite held then would stay locked
# forever in the child, and its first connect() would hang.
_open: weakref.WeakSet[SharedConnection] = weakref.WeakSet()

_held_over_fork: list[threading.Lock] = []


def _before_fork() -> None:
    for shared in list(_open):
        shared.lock.acquire()
        _held_over_fork.append(shared.lock)


def _after_fork_in_parent() -> None:
    while _held_over_fork:
        _held_over_fork.pop().release()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    # The child's connections replace their locks in after_fork(); these copies stay held.
    after_in_child=_held_over_fork.clear,
)


class SharedConnection:
    """A WAL-mode connection to ``path`` with its schema ensured, used under one lock.

    In a forked child (told by :meth:`after_fork`, or noticed at the next use) the parent's
    connection and lock are forgotten, a connection of the child's own is opened, and
    ``forked`` is called for the owner to reset its per-process state.
    """

    def __init__(
        self,
        path: str,
        *,
        url: str,
        timeout: float,
        synchronous: str,
        forked: Callable[[], None],
    ) -> None:
        self.path = path
        self.url = url
        self.timeout = timeout
        self.synchronous = synchronous
        self._forked = forked
        self.lock = threading.Lock()
        self._pid = os.getpid()
        self.conn: sqlite3.Connection | None = self._connect()
        _open.add(self)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves; threads share it under
        # self.lock, hence check_same_thread=False.
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            # A new file's pages (an existing file keeps its own size): a queue of ~1.4 KB
            # events writes each page to the log and the file once, a syscall or two per
            # page, so 16 KB pages make a quarter of the calls for the same bytes.
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode != "wal":
                logger.warning("outbox %s: WAL unavailable, using %s", self.url, mode)
            conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            # Builds that default to secure_delete=ON (Debian's, among others) zero and write
            # back every page an ack frees: twice the WAL writes of a queue that deletes
            # everything it inserts. FAST still zeroes what is deleted from pages written
            # anyway; a freed page keeps its bytes until the next insert reuses it.
            conn.execute("PRAGMA secure_delete = FAST")
            conn.execute("BEGIN IMMEDIATE")
            ensure_schema(conn, self.path)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        if self._pid != os.getpid():  # forked and nobody called after_fork(): do it now
            self.after_fork()
        with self.lock:
            if self.conn is None:
                raise sqlite3.ProgrammingError(f"outbox {self.url} is closed")
            yield self.conn

    @contextlib.contextmanager
    def transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: a read upgraded to a write in WAL mode
        # fails at once with SQLITE_BUSY instead of waiting out the busy timeout.
        with self.locked() as conn:
            conn.execute(begin)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.rollback()
                raise

    def after_fork(self) -> None:
        """Give a forked child its own connection; the parent's is left untouched.

        A no-op in the process that opened it, so calling it twice is harmless.
        """
        if self._pid != os.getpid() and self._disown_parent():
            self.conn = self._connect()

    def _disown_parent(self) -> bool:
        """Forget the parent's connection and lock; True if the connection was open."""
        inherited, self.conn = self.conn, None
        if inherited is not None:
            _inherited.append(inherited)
        # One of the parent's threads may have held the lock at fork time.
        self.lock = threading.Lock()
        self._pid = os.getpid()
        self._forked()
        return inherited is not None

    def close(self) -> None:
        """Close the connection (a forked child closes nothing of its parent's). Closing
        twice is harmless."""
        if self._pid != os.getpid():
            self._disown_parent()
            return
        with self.lock:
            conn, self.conn = self.conn, None
        _open.discard(self)
        if conn is not None:
            conn.close()

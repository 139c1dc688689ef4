"""A durable outbox in one SQLite file, shared by the processes of one machine."""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Collection, Sequence
from typing import Literal, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from pixelmirror.events import ServerEvent
from pixelmirror.outbox.base import Claimed, DeadLetter, Drops, Outbox, OutboxCounts, Progress
from pixelmirror.outbox.sqlite_connection import SharedConnection
from pixelmirror.outbox.sqlite_schema import (
    BODY_COLUMNS,
    EVENT_COLUMNS,
    KEY_COLUMNS,
    WRITTEN_BODY_COLUMNS,
    event_from_row,
    written_rows,
)

Synchronous = Literal["normal", "full"]

_ClaimedRow = tuple[int, int, "str | None", str, "str | None", str, str, int, str, bytes, str]

#: Dead letters moved back per transaction by ``replay_dead``.
REPLAY_CHUNK = 2000

#: Row ids per ``DELETE ... IN (...)`` of an ack (under the 999 parameters of old SQLites).
_IDS_PER_STATEMENT = 500

#: How stale (seconds) the row count behind ``max_events`` may be before a put recounts.
_RECOUNT_INTERVAL = 1.0


class SQLiteOutbox(Outbox):
    """Events in a SQLite file in WAL mode, shared by the threads and processes of one host.

    Durability: once :meth:`put` returns, its events are committed to the write-ahead log
    and survive the process being killed (SIGKILL, the OOM killer, a crash). With the default
    ``synchronous="normal"`` an OS crash or power loss may lose the last commits (the file
    stays intact); ``synchronous="full"`` (``?synchronous=full``) fsyncs every commit and
    survives those too, at the cost of one fsync per put. Network filesystems are not
    supported: WAL needs shared memory, so every process must be on the same machine.

    Each claim takes the write lock (``BEGIN IMMEDIATE``) and stamps its rows with a fresh
    claim token and a lease (``due = now + lease``), so two claimers never get the same row
    and a dead sender's rows come due again when its lease runs out. The receipt carries the
    token: answering a claim whose rows were since claimed again changes nothing.

    A :meth:`write` that cannot commit (the database locked beyond ``timeout`` seconds by
    another process, a full disk) raises, and the web process's writer thread keeps the
    events and tries again; no request waits for the lock. :meth:`put` logs such a failure
    instead, counts the events as dropped and never raises. Events over ``max_events`` are
    dropped and counted either way. Long operations (:meth:`replay_dead`) commit in chunks,
    so they never hold the write lock for long. ``max_events`` is checked against a row
    count at most one second old, so other processes' puts may overshoot it briefly.
    """

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "normal",
        max_events: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full'; got {synchronous!r}")
        if max_events is not None and max_events < 1:
            raise ValueError(f"max_events must be positive; got {max_events}")
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds; got {timeout}")
        self.path = os.fspath(path)
        self.url = f"sqlite:///{self.path}"
        self.lease: float | None = None
        self.synchronous = synchronous
        self.max_events = max_events
        self.timeout = timeout
        self._size_hint = 0
        self._forget_parent_counts()
        self._db = SharedConnection(
            self.path,
            url=self.url,
            timeout=timeout,
            synchronous=synchronous,
            forked=self._forget_parent_counts,
        )

    def _forget_parent_counts(self) -> None:
        self._drops = Drops(self.url, (sqlite3.Error,))
        self._size_checked = -_RECOUNT_INTERVAL

    @classmethod
    def from_url(cls, url: str) -> SQLiteOutbox:
        """Open ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

        Query options: ``synchronous`` (``normal`` or ``full``), ``max_events`` (a positive
        integer) and ``timeout`` (seconds to wait for another process's lock).
        """
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"a SQLite outbox URL looks like sqlite:///path.db; got {url!r}")
        path = unquote(parts.path[1:])
        if not path:
            raise ValueError(f"the SQLite outbox URL names no file; got {url!r}")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - {"synchronous", "max_events", "timeout"})
        if unknown:
            raise ValueError(
                f"unknown SQLite outbox option(s) {', '.join(unknown)} in {url!r}; "
                "expected synchronous, max_events or timeout"
            )
        synchronous = options.get("synchronous", "normal").lower()
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full'; got {synchronous!r}")
        try:
            max_events = int(options["max_events"]) if "max_events" in options else None
            timeout = float(options.get("timeout", 5.0))
        except ValueError:
            raise ValueError(
                f"max_events must be an integer and timeout a number of seconds; got {url!r}"
            ) from None
        outbox = cls(
            path,
            synchronous=cast(Synchronous, synchronous),
            max_events=max_events,
            timeout=timeout,
        )
        outbox.url = url
        return outbox

    def put(self, events: Sequence[ServerEvent]) -> int:
        try:
            return self.write(events)
        except Exception as exc:  # put's callers must never see an outbox failure
            self._drops.add(len(events), f"{type(exc).__name__}: {exc}", exc)
            return 0

    def write(self, events: Sequence[ServerEvent]) -> int:
        if not events:
            return 0
        now = time.time()
        with self._db.transaction() as conn:
            taken = events[: self._room(conn, len(events))]
            queue, bodies = written_rows(taken, _next_id(conn), now)
            conn.executemany(
                f"INSERT INTO events (id, {KEY_COLUMNS}, due) VALUES (?, ?, ?, ?, ?)", queue
            )
            conn.executemany(
                f"INSERT INTO bodies (id, {WRITTEN_BODY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                bodies,
            )
            self._size_hint += len(taken)
        if len(taken) < len(events):
            self._drops.add(len(events) - len(taken), f"outbox full ({self.max_events} events)")
        return len(taken)

    def _room(self, conn: sqlite3.Connection, wanted: int) -> int:
        """How many of ``wanted`` new events fit under ``max_events``."""
        if self.max_events is None:
            return wanted
        clock = time.monotonic()
        # Recount when the hint is stale or says no: a drop is decided on a fresh count.
        if (
            clock - self._size_checked >= _RECOUNT_INTERVAL
            or self._size_hint + wanted > self.max_events
        ):
            (self._size_hint,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
            self._size_checked = clock
        return max(0, min(wanted, self.max_events - self._size_hint))

    def claim(
        self, limit: int, *, lease: float, skip_pixels: Collection[str] = ()
    ) -> list[Claimed]:
        if limit < 1:
            return []
        now = time.time()
        skip = list(skip_pixels)
        find_key = (
            f"SELECT {KEY_COLUMNS} FROM events WHERE due <= ?"
            + (f" AND pixel_id NOT IN ({', '.join('?' * len(skip))})" if skip else "")
            + " ORDER BY due, id LIMIT 1"
        )
        # The oldest due rows of the batch key that has waited longest.
        pick = (
            "SELECT id FROM events WHERE due <= ?"
            " AND destination = ? AND pixel_id = ? AND test_event_code IS ?"
            " ORDER BY due, id LIMIT ?"
        )
        with self._db.locked() as conn:
            # Look before taking the write lock: an idle poll never blocks a put.
            if conn.execute(find_key, (now, *skip)).fetchone() is None:
                return []
        token = secrets.randbits(63)
        until = now + lease
        with self._db.transaction() as conn:
            key = conn.execute(find_key, (now, *skip)).fetchone()
            if key is None:
                return []
            conn.execute(
                f"UPDATE events SET due = ?, claim_token = ? WHERE id IN ({pick})",
                (until, token, now, *key, limit),
            )
            # The fresh token names this claim's rows; the index finds them by their due.
            rows: list[_ClaimedRow] = conn.execute(
                f"SELECT id, attempts, match_signature, {EVENT_COLUMNS}"
                " FROM events JOIN bodies USING (id)"
                " WHERE due = ? AND claim_token = ? ORDER BY id",
                (until, token),
            ).fetchall()
        return [
            Claimed(f"{row[0]}:{token}", event_from_row(row[3:], row[2]), row[1]) for row in rows
        ]

    def renew(self, claims: Sequence[Claimed], *, lease: float) -> list[Claimed]:
        if not claims:
            return []
        until = time.time() + lease
        lost = []
        with self._db.transaction() as conn:
            for claim, receipt in zip(claims, _receipts(claims), strict=True):
                # The token still matches: nobody claimed the row since, and nobody answered.
                renewed = conn.execute(
                    "UPDATE events SET due = ? WHERE id = ? AND claim_token = ?", (until, *receipt)
                ).rowcount
                if not renewed:
                    lost.append(claim)
        return lost

    def ack(self, claims: Sequence[Claimed]) -> None:
        if not claims:
            return
        with self._db.transaction() as conn:
            # One statement per token and chunk, not one per event: a claim's receipts share
            # its token, and each statement run costs the caller a trip through the driver.
            for token, ids in _ids_by_token(claims).items():
                for first in range(0, len(ids), _IDS_PER_STATEMENT):
                    chunk = ids[first : first + _IDS_PER_STATEMENT]
                    conn.execute(
                        "DELETE FROM events WHERE claim_token = ?"
                        f" AND id IN ({', '.join('?' * len(chunk))})",
                        (token, *chunk),
                    )

    def release(self, claims: Sequence[Claimed], *, delay: float, failed: bool = True) -> None:
        if not claims:
            return
        due = time.time() + delay
        with self._db.transaction() as conn:
            conn.executemany(
                "UPDATE events SET due = ?, attempts = attempts + ?, claim_token = NULL"
                " WHERE id = ? AND claim_token = ?",
                [(due, int(failed), *receipt) for receipt in _receipts(claims)],
            )

    def bury(self, claims: Sequence[Claimed], reason: str) -> None:
        if not claims:
            return
        now = time.time()
        receipts = _receipts(claims)
        with self._db.transaction() as conn:
            conn.executemany(
                f"INSERT INTO dead ({EVENT_COLUMNS}, attempts, reason, died_at)"
                f" SELECT {EVENT_COLUMNS}, attempts, ?, ? FROM events JOIN bodies USING (id)"
                " WHERE id = ? AND claim_token = ?",
                [(reason, now, *receipt) for receipt in receipts],
            )
            conn.executemany("DELETE FROM events WHERE id = ? AND claim_token = ?", receipts)

    def counts(self) -> OutboxCounts:
        now = time.time()
        with self._db.transaction("BEGIN") as conn:  # one snapshot for both tables
            # A bare COUNT(*) counts index entries without reading rows, and the leases
            # running are read from the index by their due times: a flush polls this while
            # a backlog drains, and a scan of every row took milliseconds each time.
            (stored,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
            (in_flight,) = conn.execute(
                "SELECT COUNT(*) FROM events WHERE due > ? AND claim_token IS NOT NULL", (now,)
            ).fetchone()
            (dead,) = conn.execute("SELECT COUNT(*) FROM dead").fetchone()
        dropped = self._drops.total
        return OutboxCounts(
            pending=stored - in_flight, in_flight=in_flight, dead=dead, dropped=dropped
        )

    def unfinished_by_pixel(self) -> dict[str, int]:
        with self._db.locked() as conn:
            rows = conn.execute("SELECT pixel_id, COUNT(*) FROM events GROUP BY pixel_id")
            return {pixel_id: count for pixel_id, count in rows.fetchall()}

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._db.locked() as conn:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS}, reason, died_at FROM dead ORDER BY id DESC LIMIT ?",
                (max(limit, 0),),
            ).fetchall()
        return [DeadLetter(event_from_row(row[:-2]), row[-2], row[-1]) for row in rows]

    def dead_count(self, *, pixel_id: str | None = None, reason: str | None = None) -> int:
        where, params = _dead_filter(pixel_id, reason)
        with self._db.locked() as conn:  # a read: WAL lets writers go on meanwhile
            (count,) = conn.execute(f"SELECT COUNT(*) FROM dead WHERE 1{where}", params).fetchone()
        return int(count)

    def _replay_dead(
        self, pixel_id: str | None, reason: str | None, progress: Progress | None
    ) -> int:
        """Move the matching dead letters back to pending, oldest first, looking at
        ``REPLAY_CHUNK`` letters per transaction (matching or not): the write lock is held
        for milliseconds at a time, so other processes' writes and claims go on between
        chunks however many letters there are and however few match."""
        where, params = _dead_filter(pixel_id, reason)
        with self._db.locked() as conn:
            (last,) = conn.execute("SELECT MAX(id) FROM dead").fetchone()
        moved = 0
        done = 0  # letters up to this id are replayed or left dead
        while last is not None and done < last:
            with self._db.transaction() as conn:
                (upto,) = conn.execute(
                    "SELECT MAX(id) FROM"
                    " (SELECT id FROM dead WHERE id > ? AND id <= ? ORDER BY id LIMIT ?)",
                    (done, last, REPLAY_CHUNK),
                ).fetchone()
                if upto is None:
                    break
                chunk = f"id > ? AND id <= ?{where}"
                # Ids after every waiting event's, in the letters' order: letter id + offset.
                offset = _next_id(conn) - done - 1
                count = conn.execute(
                    f"INSERT INTO events (id, {KEY_COLUMNS}, due)"
                    f" SELECT id + ?, {KEY_COLUMNS}, ? FROM dead WHERE {chunk}",
                    (offset, time.time(), done, upto, *params),
                ).rowcount
                conn.execute(
                    f"INSERT INTO bodies (id, {BODY_COLUMNS})"
                    f" SELECT id + ?, {BODY_COLUMNS} FROM dead WHERE {chunk}",
                    (offset, done, upto, *params),
                )
                conn.execute(f"DELETE FROM dead WHERE {chunk}", (done, upto, *params))
            done = upto
            if count:
                moved += count
                if progress is not None:
                    progress(moved)
        return moved

    def after_fork(self) -> None:
        """Give a forked child its own connection; the parent's is left untouched.

        A no-op in the process that opened the outbox, so calling it twice is harmless.
        """
        self._db.after_fork()

    def close(self) -> None:
        """Close the connection; events stay in the file. Closing twice is harmless."""
        self._db.close()


def _next_id(conn: sqlite3.Connection) -> int:
    """The id after every event waiting, for rows written with their ``bodies`` row in
    the same write transaction: new events come after all of them."""
    (last,) = conn.execute("SELECT MAX(id) FROM events").fetchone()
    return 1 if last is None else int(last) + 1


def _dead_filter(pixel_id: str | None, reason: str | None) -> tuple[str, list[str]]:
    """SQL conditions (each starting with `` AND``) and their parameters for a replay's
    filters; LIKE folds ASCII letters only, as :func:`dead_letter_matches` does."""
    where, params = "", []
    if pixel_id is not None:
        where += " AND pixel_id = ?"
        params.append(pixel_id)
    if reason is not None:
        # The user's text is taken literally: its wildcards and the escape itself escaped.
        literal = reason.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where += " AND reason LIKE ? ESCAPE '\\'"
        params.append(f"%{literal}%")
    return where, params


def _ids_by_token(claims: Sequence[Claimed]) -> dict[int, list[int]]:
    """Row ids by claim token, from receipts ``"<rowid>:<token>"``."""
    found: dict[int, list[int]] = {}
    for row_id, token in _receipts(claims):
        found.setdefault(token, []).append(row_id)
    return found


def _receipts(claims: Sequence[Claimed]) -> list[tuple[int, int]]:
    """``(rowid, claim token)`` pairs from receipts ``"<rowid>:<token>"``."""
    pairs = []
    for claim in claims:
        row_id, _, token = claim.receipt.partition(":")
        pairs.append((int(row_id), int(token)))
    return pairs

"""The SQLite outbox's tables, their columns, and the upgrade of older files in place.

``PRAGMA user_version`` is the schema version. Version 3 keeps a waiting event in two
rows with the same id: its place in the queue (``events``: batch key, attempts, due time,
claim token), which claims, renewals and releases rewrite, and what is sent (``bodies``:
event id, name, time, source and the ~1.3 KB payload), written once and deleted with its
``events`` row by a trigger. A claim thus rewrites a narrow row, not the payload.
``bodies`` also keeps the event's match signature (``match_signature``, see
:func:`~pixelmirror.events.signature_text`), so the dispatcher need not parse the payload
to count it; rows moved from older files, or replayed from ``dead``, have none.

Older files are upgraded in the transaction that reads their version, so every process
sees one schema or the other: version 1 (pixelmirror 0.1) had no ``destination`` column
(``'meta'`` for every row already there); versions 1 and 2 kept the whole event in one
``events`` row. Dead letters keep their version 2 layout (``dead``: the event's columns).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from pixelmirror.events import META, MatchSignature, ServerEvent, signature_text, stored_signature

SCHEMA_VERSION = 3

#: The batch key's columns, in :class:`~pixelmirror.events.BatchKey`'s order.
KEY_COLUMNS = "destination, pixel_id, test_event_code"
#: What is sent, in ``bodies`` (and ``dead``).
BODY_COLUMNS = "event_id, event_name, event_time, action_source, payload"
#: ``bodies``' columns the writer fills, in :func:`written_rows`' order.
WRITTEN_BODY_COLUMNS = f"{BODY_COLUMNS}, match_signature"
#: An event's columns, in :func:`event_from_row`'s order: ``dead``'s, or ``events`` joined
#: with ``bodies`` (``USING (id)``).
EVENT_COLUMNS = (
    "pixel_id, test_event_code, event_id, event_name, event_time, action_source, payload,"
    " destination"
)

_KEY_FIELDS = f"""
        destination TEXT NOT NULL DEFAULT '{META}',
        pixel_id TEXT NOT NULL,
        test_event_code TEXT,"""
# Ids are given by the writer, the same to both rows (no AUTOINCREMENT: its sequence costs
# every insert an update). One freed at the end may be given again: receipts also carry
# a random claim token, so a stale receipt never answers for a new row.
_QUEUE = f"""(
        id INTEGER PRIMARY KEY,{_KEY_FIELDS}
        attempts INTEGER NOT NULL DEFAULT 0,
        due REAL NOT NULL,
        claim_token INTEGER
    )"""
_TABLES = (
    f"CREATE TABLE IF NOT EXISTS events {_QUEUE}",
    """CREATE TABLE IF NOT EXISTS bodies (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        event_name TEXT NOT NULL,
        event_time INTEGER NOT NULL,
        action_source TEXT NOT NULL,
        payload BLOB NOT NULL,
        match_signature TEXT
    )""",
    f"""CREATE TABLE IF NOT EXISTS dead (
        id INTEGER PRIMARY KEY AUTOINCREMENT,{_KEY_FIELDS}
        event_id TEXT NOT NULL,
        event_name TEXT NOT NULL,
        event_time INTEGER NOT NULL,
        action_source TEXT NOT NULL,
        payload BLOB NOT NULL,
        attempts INTEGER NOT NULL,
        reason TEXT NOT NULL,
        died_at REAL NOT NULL
    )""",
    # Serves the claim: due rows in (due, id) order, batch key read from the index alone.
    f"CREATE INDEX IF NOT EXISTS events_claim ON events (due, id, {KEY_COLUMNS})",
    # An event answered for (acked, buried) takes its body along, whoever deletes it.
    """CREATE TRIGGER IF NOT EXISTS events_body AFTER DELETE ON events
        BEGIN DELETE FROM bodies WHERE id = old.id; END""",
)

QueueRow = tuple[int, str, str, "str | None", float]
BodyRow = tuple[int, str, str, int, str, bytes, "str | None"]
EventRow = tuple[str, "str | None", str, str, int, str, bytes, str]


def event_from_row(row: EventRow, match: str | None = None) -> ServerEvent:
    """The event stored in ``EVENT_COLUMNS``, with its stored ``match_signature``."""
    pixel_id, code, event_id, name, when, source, payload, destination = row
    # Positional: a claim rebuilds up to a thousand, and keywords cost each call more.
    return ServerEvent(
        pixel_id, event_id, name, when, source, payload, code, destination, stored_signature(match)
    )


def written_rows(
    events: Iterable[ServerEvent], first_id: int, due: float
) -> tuple[list[QueueRow], list[BodyRow]]:
    """New events' rows, ids from ``first_id``: ``events``' (``id, KEY_COLUMNS, due``) and
    ``bodies``' (``id, WRITTEN_BODY_COLUMNS``)."""
    queue: list[QueueRow] = []
    bodies: list[BodyRow] = []
    # Events alike share one signature object: a group's run of them is looked up once.
    last_match: MatchSignature | None = None
    match_text: str | None = None
    for row_id, event in enumerate(events, first_id):
        match = event.match
        if match is not last_match:
            last_match, match_text = match, None if match is None else signature_text(match)
        queue.append((row_id, event.destination, event.pixel_id, event.test_event_code, due))
        bodies.append(
            (
                row_id,
                event.event_id,
                event.event_name,
                event.event_time,
                event.action_source,
                event.payload,
                match_text,
            )
        )
    return queue, bodies


def ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create, or bring to :data:`SCHEMA_VERSION`, the tables of ``conn``'s file.

    Runs inside the caller's write transaction: an upgrade that fails leaves the file as
    it was.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"{path} has outbox schema {version}; this pixelmirror knows "
            f"{SCHEMA_VERSION}: upgrade pixelmirror"
        )
    if version == 1:
        for table in ("events", "dead"):
            conn.execute(
                f"ALTER TABLE {table} ADD COLUMN destination TEXT NOT NULL DEFAULT '{META}'"
            )
    if version in (1, 2):
        _split_bodies(conn)
    for statement in _TABLES:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _split_bodies(conn: sqlite3.Connection) -> None:
    """Move a version 2 ``events`` table's rows into ``events`` and ``bodies`` by id."""
    state = f"id, {KEY_COLUMNS}, attempts, due, claim_token"
    conn.execute("DROP INDEX IF EXISTS events_claim")
    conn.execute("ALTER TABLE events RENAME TO events_v2")
    for statement in _TABLES[:2]:
        conn.execute(statement)
    conn.execute(f"INSERT INTO events ({state}) SELECT {state} FROM events_v2")
    conn.execute(
        f"INSERT INTO bodies (id, {BODY_COLUMNS}) SELECT id, {BODY_COLUMNS} FROM events_v2"
    )
    conn.execute("DROP TABLE events_v2")

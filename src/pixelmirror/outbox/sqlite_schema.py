"""The SQLite outbox's tables, their columns, and the upgrade of older files in place.

``PRAGMA user_version`` is the schema version. Version 1 (pixelmirror 0.1) had no
``destination`` column: the upgrade adds it, ``'meta'`` for every row already there, in
the same transaction that checks the version, so every process sees one schema or the other.
"""

from __future__ import annotations

import sqlite3

from pixelmirror.events import META, ServerEvent

SCHEMA_VERSION = 2

_EVENT_FIELDS = f"""
        pixel_id TEXT NOT NULL,
        test_event_code TEXT,
        event_id TEXT NOT NULL,
        event_name TEXT NOT NULL,
        event_time INTEGER NOT NULL,
        action_source TEXT NOT NULL,
        payload BLOB NOT NULL,
        destination TEXT NOT NULL DEFAULT '{META}',"""

_TABLES = (
    f"""CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,{_EVENT_FIELDS}
        attempts INTEGER NOT NULL DEFAULT 0,
        due REAL NOT NULL,
        claim_token INTEGER
    )""",
    f"""CREATE TABLE IF NOT EXISTS dead (
        id INTEGER PRIMARY KEY AUTOINCREMENT,{_EVENT_FIELDS}
        attempts INTEGER NOT NULL,
        reason TEXT NOT NULL,
        died_at REAL NOT NULL
    )""",
)
# Serves the claim: due rows in (due, id) order, batch key read from the index alone.
_CLAIM_INDEX = (
    "CREATE INDEX IF NOT EXISTS events_claim"
    " ON events (due, id, destination, pixel_id, test_event_code)"
)

#: An event's columns, in :func:`event_from_row`'s order.
EVENT_COLUMNS = (
    "pixel_id, test_event_code, event_id, event_name, event_time, action_source, payload,"
    " destination"
)
EVENT_PLACEHOLDERS = ", ".join("?" * len(EVENT_COLUMNS.split(",")))
#: The batch key's columns, in :class:`~pixelmirror.events.BatchKey`'s order.
KEY_COLUMNS = "destination, pixel_id, test_event_code"

EventRow = tuple[str, "str | None", str, str, int, str, bytes, str]


def event_from_row(row: EventRow) -> ServerEvent:
    """The event stored in ``EVENT_COLUMNS``."""
    pixel_id, code, event_id, name, when, source, payload, destination = row
    return ServerEvent(
        pixel_id=pixel_id,
        test_event_code=code,
        event_id=event_id,
        event_name=name,
        event_time=when,
        action_source=source,
        payload=payload,
        destination=destination,
    )


def event_row(event: ServerEvent) -> EventRow:
    """``event`` as ``EVENT_COLUMNS``."""
    return (
        event.pixel_id,
        event.test_event_code,
        event.event_id,
        event.event_name,
        event.event_time,
        event.action_source,
        event.payload,
        event.destination,
    )


def ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create, or bring to :data:`SCHEMA_VERSION`, the tables of ``conn``'s file.

    Runs inside the caller's write transaction.
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
        conn.execute("DROP INDEX IF EXISTS events_claim")  # the batch key gained a column
    for statement in (*_TABLES, _CLAIM_INDEX):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

"""What the Redis outbox keeps in its stream: an event as a stream entry, and back.

An entry's fields are the event's (:func:`packed_entry`). ``destination`` is written only
for events that are not Meta's, so Meta's entries are laid out as pixelmirror 0.1 wrote
them, and an entry without the field is Meta's: old and new processes share a stream.
``match`` holds the event's match signature (:func:`~pixelmirror.events.signature_text`),
so the dispatcher need not parse the payload to count it; older processes ignore it, and an
entry without it has its payload parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pixelmirror.events import META, ServerEvent, signature_text, stored_signature
from pixelmirror.outbox.base import Claimed


def packed_entry(event: ServerEvent) -> bytes:
    """The stream entry of ``event``, as the one argument the WRITE script unpacks: each
    field's name and value written ``<length>:<bytes>``, values as redis-py would send them
    (UTF-8, decimal), in the order of the entry."""
    pixel_id, event_id = event.pixel_id.encode(), event.event_id.encode()
    name, source = event.event_name.encode(), event.action_source.encode()
    when, payload = b"%d" % event.event_time, event.payload
    packed = b"8:pixel_id%d:%s8:event_id%d:%s10:event_name%d:%s10:event_time%d:%s" % (
        len(pixel_id),
        pixel_id,
        len(event_id),
        event_id,
        len(name),
        name,
        len(when),
        when,
    )
    packed += b"13:action_source%d:%s7:payload%d:%s" % (len(source), source, len(payload), payload)
    if event.test_event_code is not None:  # absent, not empty: None must come back as None
        code = event.test_event_code.encode()
        packed += b"15:test_event_code%d:%s" % (len(code), code)
    if event.destination != META:  # absent: Meta's, as every entry of 0.1 is
        destination = event.destination.encode()
        packed += b"11:destination%d:%s" % (len(destination), destination)
    if event.match is not None:
        match = signature_text(event.match).encode()
        packed += b"5:match%d:%s" % (len(match), match)
    return packed


def write_args(maxlen: int | None, events: Sequence[ServerEvent]) -> list[bytes | int | str]:
    """WRITE's ARGV for ``events``."""
    return ["" if maxlen is None else maxlen, *map(packed_entry, events)]


def entry_event(raw: Any) -> ServerEvent:
    """Rebuild an event from a flat ``[name, value, ...]`` list or a ``{name: value}`` dict.

    Claims only see complete entries (the claim script buries the rest); a dead letter made
    of a foreign entry comes back with blanks where its fields are missing.
    """
    pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    fields = {text(name): value for name, value in pairs}
    code = fields.get("test_event_code")
    destination = fields.get("destination")
    match = fields.get("match")
    return ServerEvent(
        pixel_id=text(fields.get("pixel_id", b"")),
        event_id=text(fields.get("event_id", b"")),
        event_name=text(fields.get("event_name", b"")),
        event_time=int(fields.get("event_time", 0)),
        action_source=text(fields.get("action_source", b"")),
        payload=bytes(fields.get("payload", b"")),
        test_event_code=None if code is None else text(code),
        destination=META if destination is None else text(destination),
        match=None if match is None else stored_signature(text(match)),
    )


def claimed_event(fields: Sequence[Any]) -> ServerEvent:
    """Rebuild an event from the CLAIM script's answer: its fields by position (pixel_id,
    event_id, event_name, event_time, action_source, payload, test_event_code, destination,
    match), the last three None when the entry lacks them, as :func:`entry_event` reads
    them."""
    pixel_id, event_id, name, when, source, payload, code, destination, match = fields
    return ServerEvent(
        pixel_id.decode(),
        event_id.decode(),
        name.decode(),
        int(when),
        source.decode(),
        payload,
        None if code is None else code.decode(),
        META if destination is None else destination.decode(),
        None if match is None else stored_signature(match.decode()),
    )


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def receipt_args(claims: Sequence[Claimed]) -> list[str]:
    """``id, count, id, count, ...`` from receipts ``"<entry id>:<delivery count>"``."""
    flat = []
    for claim in claims:
        entry_id, _, count = claim.receipt.rpartition(":")
        flat += [entry_id, count]
    return flat

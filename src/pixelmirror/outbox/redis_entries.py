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
    field's name and value a MessagePack string, values as redis-py would send them (UTF-8,
    decimal), in the order of the entry. Redis's ``cmsgpack.unpack`` gives them back as
    the ``XADD`` arguments in one call, where a Lua loop over lengths took a dozen."""
    pixel_id, event_id = event.pixel_id.encode(), event.event_id.encode()
    name, source = event.event_name.encode(), event.action_source.encode()
    when, payload = b"%d" % event.event_time, event.payload
    packed = _REQUIRED % (
        _head(len(pixel_id)),
        pixel_id,
        _head(len(event_id)),
        event_id,
        _head(len(name)),
        name,
        _head(len(when)),
        when,
        _head(len(source)),
        source,
        _head(len(payload)),
        payload,
    )
    if event.test_event_code is not None:  # absent, not empty: None must come back as None
        packed += _string(b"test_event_code") + _string(event.test_event_code.encode())
    if event.destination != META:  # absent: Meta's, as every entry of 0.1 is
        packed += _string(b"destination") + _string(event.destination.encode())
    if event.match is not None:
        packed += _string(b"match") + _string(signature_text(event.match).encode())
    return packed


def _string(value: bytes) -> bytes:
    """``value`` as a MessagePack str."""
    return _head(len(value)) + value


def _head(size: int) -> bytes:
    """The header of a MessagePack str of ``size`` bytes, the smallest that holds it."""
    if size < 0x100:
        return _SHORT_HEADS[size]
    if size < 0x10000:
        return b"\xda" + size.to_bytes(2, "big")
    return b"\xdb" + size.to_bytes(4, "big")


#: fixstr up to 31 bytes, str 8 up to 255.
_SHORT_HEADS = [bytes((0xA0 | size,) if size < 32 else (0xD9, size)) for size in range(0x100)]
#: The six fields every entry has, names written out, values after their headers.
_REQUIRED = (
    b"".join(
        _string(name) + b"%b%b"
        for name in (b"pixel_id", b"event_id", b"event_name", b"event_time", b"action_source")
    )
    + _string(b"payload")
    + b"%b%b"
)


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

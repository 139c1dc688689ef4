"""A sink that writes Meta's request bodies to a JSONL file instead of sending them.

Each batch becomes one line: ``{"destination":...,"pixel_id":...,"body":<body>}``
where ``<body>`` is, byte for byte, the JSON body the Graph client would POST to
``/{version}/{pixel_id}/events`` (events, ``partner_agent``, ``test_event_code``) minus
``access_token`` and ``appsecret_proof``, which never reach the file. Batching, retries and
counts are the dispatcher's, as for Meta: for audits, and for dry runs that leave a record.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from pixelmirror.delivery.errors import TransientError
from pixelmirror.delivery.graph import request_body
from pixelmirror.delivery.sink import Delivered
from pixelmirror.events import BatchKey


class FileSink:
    """Appends one line per batch to ``path``, opened for each batch (a rotated file is
    followed). A failed write (disk full, no permission, no directory) is a
    :class:`~pixelmirror.delivery.errors.TransientError`: the batch is retried."""

    def __init__(self, path: str, *, partner_agent: str | None = None) -> None:
        self.path = path
        self._partner_agent = partner_agent
        self._lock = threading.Lock()  # one line at a time from this process's senders

    @classmethod
    def from_url(cls, url: str, *, partner_agent: str | None = None) -> FileSink:
        """Open ``file:///absolute/path.jsonl``."""
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"a file sink URL looks like file:///path.jsonl; got {url!r}")
        return cls(unquote(parts.path), partner_agent=partner_agent)

    def __repr__(self) -> str:
        return f"<FileSink {self.path}>"

    def deliver(self, key: BatchKey, payloads: Sequence[bytes]) -> Delivered:
        body = request_body(
            payloads, partner_agent=self._partner_agent, test_event_code=key.test_event_code
        )
        head = json.dumps(
            {"destination": key.destination, "pixel_id": key.pixel_id}, separators=(",", ":")
        )
        line = head[:-1].encode() + b',"body":' + body + b"}\n"
        try:
            with self._lock:
                self._append(line)
        except OSError as exc:
            raise TransientError(f"could not write {self.path}: {exc}") from None
        return Delivered(len(payloads))

    def _append(self, line: bytes) -> None:
        # One O_APPEND write per line: lines of several processes never interleave.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write: {written} of {len(line)} bytes")
        finally:
            os.close(fd)

    def fresh_credential(self, pixel_id: str) -> str | None:
        return None  # nothing to refuse

    def close(self) -> None:
        """Nothing held between batches."""

"""The carry cookie: browser events that ride over a redirect to the next HTML page.

A view that tracks an event and answers with a redirect (POST-redirect-GET) has no page to
fire its browser copy in. The copy waits in a signed cookie (salt ``pixelmirror.carry``,
``Max-Age=600``, ``HttpOnly``) until the next page, which fires it with the same
``event_id`` as its server copy. The cookie's payload is a JSON list of
``{"name", "event_id", "custom_data", "pixel_id"?}`` objects, encoded the way itsdangerous'
``URLSafeSerializer`` does it (compact JSON, zlib when shorter, base64url) and signed by
:class:`~pixelmirror.signing.Seal`: cookies set by earlier versions still read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from itsdangerous import BadData, URLSafeSerializer

from pixelmirror.config import Config
from pixelmirror.events import BrowserEvent, json_default
from pixelmirror.facts import RequestFacts
from pixelmirror.identity import CLOCK_SKEW, cookie_attributes
from pixelmirror.signing import Seal

_log = logging.getLogger("pixelmirror.web")

CARRY_SALT = "pixelmirror.carry"
#: Seconds a carried browser event waits for the next HTML page.
CARRY_MAX_AGE = 600
#: Longest ``Set-Cookie`` value for carried events; browsers cap a cookie near 4096 bytes.
CARRY_MAX_BYTES = 3800
_MAX_CARRY_COOKIE = 4096


class Carry:
    """Writes and reads the carry cookie of one site's settings."""

    def __init__(self, config: Config) -> None:
        self.name = f"{config.cookie_name}_ev"
        tail = cookie_attributes(config)
        self._suffix = f"; Path=/; Max-Age={CARRY_MAX_AGE}{tail}"
        #: ``Set-Cookie`` value deleting the cookie (``Max-Age=0``).
        self.clear = f"{self.name}=; Path=/; Max-Age=0{tail}"
        self._seal = Seal(config.secret_key, CARRY_SALT)
        # Used only for its payload encoding; signing is Seal's. The JSON policy is the one
        # the page and the server copy use, so carried custom_data renders as it would have.
        self._payload: URLSafeSerializer = URLSafeSerializer(
            list(reversed(config.secret_key)),
            salt=CARRY_SALT,
            serializer_kwargs={"default": json_default},
        )

    def cookie(self, events: Sequence[BrowserEvent], *, now: float | None = None) -> str:
        """``Set-Cookie`` value carrying ``events`` (oldest first) to the next HTML page.

        Past :data:`CARRY_MAX_BYTES` the oldest events lose their ``custom_data`` first, then
        the oldest events go, with a warning. Nothing left to carry gives the deleting cookie.
        """
        now = time.time() if now is None else now
        items = [_item(event) for event in events]
        cookie = self._cookie(items, now)
        if len(cookie) > CARRY_MAX_BYTES:
            stripped = 0
            for item in items:
                if item.pop("custom_data", None) is not None:
                    stripped += 1
                    cookie = self._cookie(items, now)
                    if len(cookie) <= CARRY_MAX_BYTES:
                        break
            dropped = 0
            while len(cookie) > CARRY_MAX_BYTES and items:
                del items[0]
                dropped += 1
                cookie = self._cookie(items, now)
            _log.warning(
                "carried events exceed %d bytes; custom_data dropped from %d, "
                "%d event(s) dropped (their server copies are unaffected)",
                CARRY_MAX_BYTES,
                stripped,
                dropped,
            )
        return cookie if items else self.clear

    def _cookie(self, items: list[dict[str, object]], now: float) -> str:
        token = self._seal.seal(self._payload.dump_payload(items), now)
        return f"{self.name}={token}{self._suffix}"

    def read(self, facts: RequestFacts, *, now: float | None = None) -> list[BrowserEvent]:
        """The events :meth:`cookie` put in this request's cookie; ``[]`` when there is none,
        or it is tampered with, expired or malformed."""
        # Most pages carry nothing: a header without the name needs no parse.
        if self.name not in facts.headers.get("cookie", ""):
            return []
        token = facts.cookies.get(self.name)
        if not token or len(token) > _MAX_CARRY_COOKIE:
            return []
        opened = self._seal.open(token)
        if opened is None:
            return []
        value, signed_at, _ = opened
        age = (time.time() if now is None else now) - signed_at
        if not -CLOCK_SKEW <= age <= CARRY_MAX_AGE:
            return []
        try:
            data: object = self._payload.load_payload(value)
        except (BadData, ValueError):
            return []
        if not isinstance(data, list):
            return []
        events = [_event(item) for item in data]
        return [] if None in events else [event for event in events if event is not None]


def _item(event: BrowserEvent) -> dict[str, object]:
    item: dict[str, object] = {
        "name": event.name,
        "event_id": event.event_id,
        "custom_data": event.custom_data,
    }
    if event.pixel_id:
        item["pixel_id"] = event.pixel_id
    return item


def _event(item: object) -> BrowserEvent | None:
    """A carried item back as the event it was, or None for a shape we never write."""
    if not isinstance(item, dict):
        return None
    name, event_id = item.get("name"), item.get("event_id")
    custom_data, pixel_id = item.get("custom_data", {}), item.get("pixel_id")
    if not isinstance(name, str) or not isinstance(event_id, str):
        return None
    if not isinstance(custom_data, Mapping):
        return None
    return BrowserEvent(
        name, event_id, custom_data, pixel_id if isinstance(pixel_id, str) else None
    )


__all__ = ["CARRY_MAX_AGE", "CARRY_MAX_BYTES", "CARRY_SALT", "Carry"]

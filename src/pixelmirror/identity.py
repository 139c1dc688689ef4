"""Who is visiting: the signed visitor id, and the request's visitor assembled from the
concerns beside it (consent, the crawler filter, ``_fbp`` / ``_fbc``, the client IP).

:class:`Identity` runs on every request, so it is built to be cheap (patterns compiled at
import, settings digested once in ``__init__``) and to never raise on request input: a
malformed cookie, header or address is treated as absent. Only a bad configuration raises,
and it does so at construction.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadData, URLSafeSerializer

from pixelmirror import _domains
from pixelmirror._domains import is_local
from pixelmirror.bots import CrawlerFilter, is_crawler
from pixelmirror.config import Config, ConfigError
from pixelmirror.consent import Consent
from pixelmirror.facts import RequestFacts
from pixelmirror.fbcookies import FbCookies
from pixelmirror.normalize import sha256_hex
from pixelmirror.proxies import Proxies
from pixelmirror.signing import Seal

# is_crawler: documented here since 0.1 for sites composing their own is_bot.
__all__ = ["Identity", "Visitor", "is_crawler"]

_log = logging.getLogger("pixelmirror")

VISITOR_SALT = "pixelmirror.visitor"
CARRY_SALT = "pixelmirror.carry"
#: Seconds a carried browser event waits for the next HTML page.
CARRY_MAX_AGE = 600
#: Longest ``Set-Cookie`` value for carried events; browsers cap a cookie near 4096 bytes.
CARRY_MAX_BYTES = 3800
# A signed visitor cookie is about 60 characters; anything far longer is not ours.
_MAX_VISITOR_COOKIE = 256
_MAX_CARRY_COOKIE = 4096
# A signature from a little in the future is clock skew between our own servers.
_CLOCK_SKEW = 300.0
# secrets.token_urlsafe(16): 22 characters of the URL-safe base64 alphabet.
_VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{22}")


@dataclass(frozen=True, slots=True)
class Visitor:
    """What one request tells about its visitor, ready for the pixel and the server event.

    Only :attr:`external_id` (a hash) identifies the visitor to Meta; :attr:`visitor_id`
    stays between this site and the browser's signed cookie.
    """

    #: The random id in the signed visitor cookie.
    visitor_id: str
    #: ``sha256_hex(visitor_id)``: sent byte-identical to the pixel and the Conversions API.
    external_id: str
    fbp: str | None
    fbc: str | None
    client_ip: str | None
    user_agent: str | None
    #: ``Set-Cookie`` header values for cookies that are new or changed; usually empty.
    set_cookies: tuple[str, ...] = ()


class Identity:
    """Resolves the visitor of a request, and builds the cookies that remember it.

    Security and privacy defaults:

    - The visitor id is random (``secrets.token_urlsafe(16)``) and travels only in a cookie
      signed in itsdangerous' format (:mod:`pixelmirror.signing`, salt
      ``pixelmirror.visitor``): ``HttpOnly; SameSite=Lax; Path=/``, ``Secure`` unless
      ``cookie_secure`` is off, host-only unless ``cookie_domain``
      is set. A cookie that is missing, tampered with, signed by an unknown key, older than
      ``cookie_max_age``, oversized or of the wrong shape is replaced by a new id; it is never
      an error. ``secret_key`` is newest first: the first key signs, all keys verify, and a
      cookie of an older key is re-signed once with the newest.
    - ``Set-Cookie`` is sent only for a new or changed cookie, never on every response, so
      pages stay cacheable. The visitor cookie is refreshed (re-signed, full ``Max-Age``)
      only once more than half of ``cookie_max_age`` has passed since it was signed.
    - ``X-Forwarded-*`` and ``Forwarded`` are believed only when the socket peer is inside
      ``trusted_proxies`` (:mod:`pixelmirror.proxies`); otherwise the client IP is the peer
      itself.
    - No consent, or a crawler while ``bot_filter`` is on: :meth:`resolve` returns None and
      the request gets no pixel, no cookie and no server event. A failing ``consent``
      callable counts as no consent (:mod:`pixelmirror.consent`, :mod:`pixelmirror.bots`).
    - ``_fbp`` / ``_fbc`` are read, minted and set by :mod:`pixelmirror.fbcookies`.

    :param config: the settings; ``secret_key`` must not be empty.
    :param consent: decides consent per request, overriding ``consent_cookie``.
    :param is_bot: decides per request whether it comes from a crawler, replacing the
        built-in :func:`is_crawler` check (``bot_filter`` off still turns filtering off). A
        failing callable falls back to the built-in check.
    :raises ConfigError: no ``secret_key``.
    """

    def __init__(
        self,
        config: Config,
        *,
        consent: Callable[[RequestFacts], bool] | None = None,
        is_bot: Callable[[RequestFacts], bool] | None = None,
    ) -> None:
        if not config.secret_key:
            raise ConfigError(
                "PIXELMIRROR_SECRET_KEY is required when PIXELMIRROR_PIXEL_ID is set: it signs "
                "the visitor cookie so that visitor ids cannot be forged. Generate one with: "
                'python -c "import secrets; print(secrets.token_urlsafe(32))"'
            )
        _domains.load()  # the Public Suffix List: read now rather than on a request
        domain = config.cookie_domain
        self._max_age = config.cookie_max_age
        self._crawlers = CrawlerFilter(config, is_bot)
        self._consent = Consent(config, consent)
        self._proxies = Proxies(config)
        self._fb = FbCookies(config, self._proxies)
        self._secure = config.cookie_secure
        self._warned_http = False
        self._warn_lock = threading.Lock()
        self._cookie_name = config.cookie_name
        self._carry_name = f"{config.cookie_name}_ev"
        # Attributes after "name=value; Path=/; Max-Age=N", the same for every response.
        domain_attr = f"; Domain={domain}" if domain else ""
        secure = "; Secure" if config.cookie_secure else ""
        tail = f"{domain_attr}; HttpOnly; SameSite=Lax{secure}"
        self._visitor_suffix = f"; Path=/; Max-Age={config.cookie_max_age}{tail}"
        self._carry_suffix = f"; Path=/; Max-Age={CARRY_MAX_AGE}{tail}"
        self._carry_clear = f"{self._carry_name}=; Path=/; Max-Age=0{tail}"
        self._visitor_seal = Seal(config.secret_key, VISITOR_SALT)
        self._carry_seal = Seal(config.secret_key, CARRY_SALT)
        # Used only for its payload encoding (compact JSON, zlib when shorter, base64url);
        # signing is Seal's. ``default=str`` keeps a Decimal in custom_data from failing.
        self._carry_payload: URLSafeSerializer = URLSafeSerializer(
            list(reversed(config.secret_key)), salt=CARRY_SALT, serializer_kwargs={"default": str}
        )

    # -- the visitor ------------------------------------------------------------------------

    def resolve(self, facts: RequestFacts, *, now: float | None = None) -> Visitor | None:
        """The request's visitor, or None when it must get no pixel, no cookie and no server
        event (no consent, or a crawler while ``bot_filter`` is on)."""
        now = time.time() if now is None else now
        user_agent = facts.headers.get("user-agent", "").strip() or None
        if self._crawlers.excludes(facts, user_agent):
            return None
        if not self._consent.given(facts):
            return None
        set_cookies: list[str] = []
        visitor_id = self._visitor_id(facts.cookie_values(self._cookie_name), now, set_cookies)
        peer, trusted = self._proxies.peer(facts)
        if set_cookies and self._secure and not self._warned_http:
            self._warn_if_http(facts, trusted)
        fbp, fbc = self._fb.read(facts, trusted, now, set_cookies)
        return Visitor(
            visitor_id=visitor_id,
            external_id=sha256_hex(visitor_id),
            fbp=fbp,
            fbc=fbc,
            client_ip=self._proxies.client_ip(facts, peer, trusted),
            user_agent=user_agent,
            set_cookies=tuple(set_cookies),
        )

    def _visitor_id(self, tokens: Sequence[str], now: float, set_cookies: list[str]) -> str:
        # A sibling subdomain may send its own cookie of the same name, garbage to us, and
        # maybe first: the first one that verifies is the visitor's.
        for token in tokens:
            if not token or len(token) > _MAX_VISITOR_COOKIE:
                continue
            opened = self._visitor_seal.open(token)
            if opened is None:
                continue
            value, signed_at, newest_key = opened
            age = now - signed_at
            visitor_id = value.decode("ascii", "replace")
            if -_CLOCK_SKEW <= age <= self._max_age and _VISITOR_ID.fullmatch(visitor_id):
                if not newest_key or age > self._max_age / 2:
                    set_cookies.append(self._visitor_cookie(visitor_id, now))
                return visitor_id
        visitor_id = secrets.token_urlsafe(16)
        set_cookies.append(self._visitor_cookie(visitor_id, now))
        return visitor_id

    def _warn_if_http(self, facts: RequestFacts, trusted: bool) -> None:
        """Say once that a ``Secure`` visitor cookie went out over plain http: browsers drop
        it (but on localhost), so every page would look like a new visitor."""
        scheme, host = self._proxies.origin(facts, trusted)
        if scheme != "http" or is_local(host):
            return
        with self._warn_lock:
            if self._warned_http:
                return
            self._warned_http = True
        _log.warning(
            "pixelmirror: PIXELMIRROR_COOKIE_SECURE is on, but %s came over plain http: "
            "browsers drop Secure cookies there, so every page gets a new visitor id. Serve "
            "https (behind a proxy: list it in PIXELMIRROR_TRUSTED_PROXIES so its "
            "X-Forwarded-Proto counts), or set PIXELMIRROR_COOKIE_SECURE=false for local http",
            host,
        )

    def _visitor_cookie(self, visitor_id: str, now: float) -> str:
        token = self._visitor_seal.seal(visitor_id.encode("ascii"), now)
        return f"{self._cookie_name}={token}{self._visitor_suffix}"

    # -- page URL ----------------------------------------------------------------------------

    def page_url(self, facts: RequestFacts) -> str:
        """The URL as the browser sees it, behind trusted proxies (:meth:`Proxies.page_url`)."""
        return self._proxies.page_url(facts)

    # -- carried browser events -------------------------------------------------------------

    def carry_cookie(
        self, events: Sequence[Mapping[str, object]], *, now: float | None = None
    ) -> str:
        """``Set-Cookie`` value carrying browser events to the next HTML page (signed, salt
        ``pixelmirror.carry``, ``Max-Age=600``, ``HttpOnly``).

        ``events`` is the full list, oldest first (``name``, ``event_id``, ``custom_data``).
        Past :data:`CARRY_MAX_BYTES` the oldest events lose their ``custom_data`` first, then
        the oldest events go, with a warning. Nothing left to carry gives the deleting cookie.
        """
        now = time.time() if now is None else now
        items: list[dict[str, object]] = [dict(event) for event in events]
        cookie = self._carried_cookie(items, now)
        if len(cookie) > CARRY_MAX_BYTES:
            stripped = 0
            for item in items:
                if item.pop("custom_data", None) is not None:
                    stripped += 1
                    cookie = self._carried_cookie(items, now)
                    if len(cookie) <= CARRY_MAX_BYTES:
                        break
            dropped = 0
            while len(cookie) > CARRY_MAX_BYTES and items:
                del items[0]
                dropped += 1
                cookie = self._carried_cookie(items, now)
            _log.warning(
                "pixelmirror: carried events exceed %d bytes; custom_data dropped from %d, "
                "%d event(s) dropped (their server copies are unaffected)",
                CARRY_MAX_BYTES,
                stripped,
                dropped,
            )
        return cookie if items else self._carry_clear

    def _carried_cookie(self, items: list[dict[str, object]], now: float) -> str:
        token = self._carry_seal.seal(self._carry_payload.dump_payload(items), now)
        return f"{self._carry_name}={token}{self._carry_suffix}"

    def read_carried(
        self, facts: RequestFacts, *, now: float | None = None
    ) -> list[dict[str, object]]:
        """The events :meth:`carry_cookie` put in this request's cookie; ``[]`` when there is
        none, or it is tampered with, expired or malformed."""
        token = facts.cookies.get(self._carry_name)
        if not token or len(token) > _MAX_CARRY_COOKIE:
            return []
        opened = self._carry_seal.open(token)
        if opened is None:
            return []
        value, signed_at, _ = opened
        age = (time.time() if now is None else now) - signed_at
        if not -_CLOCK_SKEW <= age <= CARRY_MAX_AGE:
            return []
        try:
            data: Any = self._carry_payload.load_payload(value)
        except (BadData, ValueError):
            return []
        if not isinstance(data, list) or not all(_is_carried(item) for item in data):
            return []
        return data

    def clear_carry_cookie(self) -> str:
        """``Set-Cookie`` value deleting the carried-events cookie (``Max-Age=0``)."""
        return self._carry_clear


def _is_carried(item: object) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("event_id"), str)
        and isinstance(item.get("custom_data", {}), dict)
    )

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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from pixelmirror import _domains
from pixelmirror._domains import is_local
from pixelmirror._urandom import Pool
from pixelmirror.bots import CrawlerFilter, is_crawler
from pixelmirror.config import Config, ConfigError
from pixelmirror.consent import Consent
from pixelmirror.facts import RequestFacts
from pixelmirror.fbcookies import FbCookies
from pixelmirror.normalize import own_visitor_wire, sha256_hex
from pixelmirror.proxies import Proxies
from pixelmirror.signing import Seal, urlsafe_b64encode

# is_crawler: documented here since 0.1 for sites composing their own is_bot.
__all__ = ["Identity", "Visitor", "is_crawler"]

_log = logging.getLogger("pixelmirror.identity")

VISITOR_SALT = "pixelmirror.visitor"
# A signed visitor cookie is about 60 characters; anything far longer is not ours.
_MAX_VISITOR_COOKIE = 256
# A signature from a little in the future is clock skew between our own servers.
CLOCK_SKEW = 300.0
# Visitor tokens whose verdict is kept (~0.8 MB at most).
_OPENED_KEPT = 2048
# Returning visitors kept by their requests' Cookie header, User-Agent and addresses, when
# these come to at most 6 KB, as an ordinary browser's do (~7 MB at most): the client
# chooses them, and a longer set is read afresh each time rather than kept.
_ASKED_KEPT = 1024
_MAX_ASKED_TEXT = 6144
# Returning visitors whose Visitor is kept (~2 MB at most, their User-Agents and wire user
# data included); a User-Agent longer than any browser's is not kept.
_RETURNING_KEPT = 2048
_MAX_KEPT_AGENT = 1024
# 16 random bytes in URL-safe base64 without padding, as secrets.token_urlsafe(16) makes
# them: 22 characters.
_VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{22}")


def _visitor_ids_of(raw: bytes) -> list[str]:
    """The visitor id of each 16 bytes, in one encoding: 16 bytes and two zero bytes make 24
    base64 characters, of which the first 22 are those of the 16 bytes alone."""
    count = len(raw) // 16
    padded = bytearray(18 * count)
    for at in range(16):
        padded[at::18] = raw[at::16]
    text = urlsafe_b64encode(padded).decode("ascii")
    return [text[at : at + 22] for at in range(0, 24 * count, 24)]


def _new_visitors_of(raw: bytes) -> list[tuple[str, str, bytes]]:
    """``(visitor id, its sha256_hex, its ASCII bytes)`` of each 16 bytes: a new visitor's
    hash and the bytes its token signs, made in the batch rather than on its page."""
    visitors = []
    for visitor_id in _visitor_ids_of(raw):
        encoded = visitor_id.encode("ascii")
        visitors.append((visitor_id, sha256_hex(visitor_id), encoded))
    return visitors


_new_visitors = Pool(lambda raw: _new_visitors_of(raw)[0], size=16, mint_all=_new_visitors_of)


class _Opened(NamedTuple):
    """What a visitor token that verified says, worked out once per token."""

    visitor_id: str
    #: ``sha256_hex(visitor_id)``.
    external_id: str
    signed_at: int
    by_newest_key: bool


@dataclass(frozen=True, init=False)
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
    #: Its user data (the fields above) as an event's wire JSON text and keys, made once
    #: (:func:`~pixelmirror.normalize.own_visitor_wire`); None: events must normalise it.
    wire: tuple[str, tuple[str, ...]] | None = field(default=None, repr=False, compare=False)

    def __init__(
        self,
        visitor_id: str,
        external_id: str,
        fbp: str | None,
        fbc: str | None,
        client_ip: str | None,
        user_agent: str | None,
        set_cookies: tuple[str, ...] = (),
        wire: tuple[str, tuple[str, ...]] | None = None,
    ) -> None:
        # Written straight into __dict__: a frozen dataclass's own __init__ calls
        # object.__setattr__ once per field, and every new visitor makes one of these.
        visitor = self.__dict__
        visitor["visitor_id"] = visitor_id
        visitor["external_id"] = external_id
        visitor["fbp"] = fbp
        visitor["fbc"] = fbc
        visitor["client_ip"] = client_ip
        visitor["user_agent"] = user_agent
        visitor["set_cookies"] = set_cookies
        visitor["wire"] = wire


class Identity:
    """Resolves the visitor of a request, and builds the cookies that remember it.

    Security and privacy defaults:

    - The visitor id is random (16 bytes of ``os.urandom``, as ``secrets.token_urlsafe(16)``
      makes it) and travels only in a cookie signed in itsdangerous' format
      (:mod:`pixelmirror.signing`, salt ``pixelmirror.visitor``): ``HttpOnly; SameSite=Lax;
      Path=/``, ``Secure`` unless ``cookie_secure`` is off, host-only unless ``cookie_domain``
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
        self._max_age = config.cookie_max_age
        self._crawlers = CrawlerFilter(config, is_bot)
        self._consent = Consent(config, consent)
        self._proxies = Proxies(config.trusted_proxies)
        self._fb = FbCookies(config, self._proxies)
        self._secure = config.cookie_secure
        self._warned_http = False
        self._warn_lock = threading.Lock()
        self._cookie_name = config.cookie_name
        # The same for every response: made once.
        self._visitor_suffix = (
            f"; Path=/; Max-Age={config.cookie_max_age}{cookie_attributes(config)}"
        )
        self._visitor_seal = Seal(config.secret_key, VISITOR_SALT)
        self._opened: dict[str, _Opened] = {}
        self._returning: dict[tuple[str | None, ...], Visitor] = {}
        # A returning visitor's Visitor and token stamp, by what its request said (the Cookie
        # header with the token itself); None when a hook decides on each request.
        self._asked: dict[tuple[str | None, ...], tuple[Visitor, int]] | None = (
            {} if is_bot is None and consent is None else None
        )

    # -- the visitor ------------------------------------------------------------------------

    def resolve(self, facts: RequestFacts, *, now: float | None = None) -> Visitor | None:
        """The request's visitor, or None when it must get no pixel, no cookie and no server
        event (no consent, or a crawler while ``bot_filter`` is on)."""
        now = time.time() if now is None else now
        headers = facts.headers
        user_agent = headers.get("user-agent", "").strip() or None
        # A returning visitor's pages differ, for us, only by the clock unless a hook decides
        # or an fbclid comes: the Visitor is kept by all else its answer depends on.
        asked: tuple[str | None, ...] | None = None
        by_asked = self._asked
        cookie = headers.get("cookie")
        # Without the visitor cookie's name in the header there is no token to keep it by.
        if (
            by_asked is not None
            and cookie is not None
            and self._cookie_name in cookie
            and "fbclid" not in facts.query
            and "fbclid" not in headers.get("referer", "")
        ):
            asked = (
                cookie,
                user_agent,
                facts.peer,
                headers.get("x-forwarded-for"),
                headers.get("forwarded"),
                headers.get("sec-gpc"),
            )
            kept = by_asked.get(asked)
            # In date and not due for a refresh, as when it was kept: the same answer.
            if kept is not None and -CLOCK_SKEW <= now - kept[1] <= self._max_age / 2:
                return kept[0]
        if self._crawlers.excludes(facts, user_agent):
            return None
        if self._consent.asks and not self._consent.given(facts):
            return None
        set_cookies: list[str] = []
        tokens = facts.cookie_values(self._cookie_name)
        visitor_id, external_id, signed_at = self._visitor_id(tokens, now, set_cookies)
        peer, trusted = self._proxies.peer(facts)
        if set_cookies and self._secure and not self._warned_http:
            self._warn_if_http(facts, trusted)
        fbp, fbc = self._fb.read(facts, trusted, now, set_cookies)
        # An untrusted peer is the client itself: no forwarded header to walk.
        client_ip = self._proxies.client_ip(facts, peer, trusted) if trusted else peer
        # Every value is in wire form (the id our own hash, the IP canonical, the User-Agent
        # stripped, the fb cookies matched or minted): its wire JSON is written as it is.
        if set_cookies:
            wire = own_visitor_wire(external_id, client_ip, user_agent, fbc, fbp)
            return Visitor(
                visitor_id, external_id, fbp, fbc, client_ip, user_agent, tuple(set_cookies), wire
            )
        # A returning visitor tells the same on page after page: the same (immutable) Visitor
        # serves them all.
        said = (visitor_id, fbp, fbc, client_ip, user_agent)
        keep = user_agent is None or len(user_agent) <= _MAX_KEPT_AGENT
        visitor = self._returning.get(said)
        if visitor is None:
            wire = own_visitor_wire(external_id, client_ip, user_agent, fbc, fbp)
            visitor = Visitor(visitor_id, external_id, fbp, fbc, client_ip, user_agent, (), wire)
            if keep:
                if len(self._returning) >= _RETURNING_KEPT:
                    self._returning.clear()
                self._returning[said] = visitor
        if (
            keep
            and by_asked is not None
            and asked is not None
            and signed_at is not None
            and sum(len(part) for part in asked if part) <= _MAX_ASKED_TEXT
        ):
            if len(by_asked) >= _ASKED_KEPT:
                by_asked.clear()
            by_asked[asked] = (visitor, signed_at)
        return visitor

    def is_crawler(self, facts: RequestFacts) -> bool:
        """Whether the crawler filter keeps this request out (what :meth:`resolve` checks
        first), to tell a crawler from a visitor who has not consented yet."""
        user_agent = facts.headers.get("user-agent", "").strip() or None
        return self._crawlers.excludes(facts, user_agent)

    def _visitor_id(
        self, tokens: Sequence[str], now: float, set_cookies: list[str]
    ) -> tuple[str, str, int | None]:
        """``(visitor id, external id, signed at)``: of the first token that verifies and is in
        date, else of a new visitor. ``signed at`` only for the first token sent: with one
        before it, a token stamped past the clock skew may come in date and win later."""
        # A sibling subdomain may send its own cookie of the same name, garbage to us, and
        # maybe first: the first one that verifies is the visitor's.
        for token in tokens:
            opened = self._opened.get(token)
            if opened is None:
                opened = self._open(token)
                if opened is None:
                    continue
                # A returning visitor sends the same token on every page: keep what it says
                # (only tokens that verified, so forged ones cannot fill it; ages are checked
                # each time below).
                if len(self._opened) >= _OPENED_KEPT:
                    self._opened.clear()
                self._opened[token] = opened
            visitor_id, external_id, signed_at, by_newest_key = opened
            age = now - signed_at
            if -CLOCK_SKEW <= age <= self._max_age:
                if not by_newest_key or age > self._max_age / 2:
                    set_cookies.append(self._visitor_cookie(visitor_id.encode("ascii"), now))
                return visitor_id, external_id, signed_at if token is tokens[0] else None
        visitor_id, external_id, encoded = _new_visitors.draw()
        set_cookies.append(self._visitor_cookie(encoded, now))
        return visitor_id, external_id, None

    def _open(self, token: str) -> _Opened | None:
        """What a token says, or None when it is not ours (oversized, tampered, another key,
        not an id of the shape we mint)."""
        if not token or len(token) > _MAX_VISITOR_COOKIE:
            return None
        opened = self._visitor_seal.open(token)
        if opened is None:
            return None
        value, signed_at, by_newest_key = opened
        visitor_id = value.decode("ascii", "replace")
        if not _VISITOR_ID.fullmatch(visitor_id):
            return None
        return _Opened(visitor_id, sha256_hex(visitor_id), signed_at, by_newest_key)

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
            "PIXELMIRROR_COOKIE_SECURE is on, but %s came over plain http: "
            "browsers drop Secure cookies there, so every page gets a new visitor id. Serve "
            "https (behind a proxy: list it in PIXELMIRROR_TRUSTED_PROXIES so its "
            "X-Forwarded-Proto counts), or set PIXELMIRROR_COOKIE_SECURE=false for local http",
            host,
        )

    def _visitor_cookie(self, visitor_id: bytes, now: float) -> str:
        token = self._visitor_seal.seal(visitor_id, now)
        return f"{self._cookie_name}={token}{self._visitor_suffix}"

    # -- page URL ----------------------------------------------------------------------------

    def page_url(self, facts: RequestFacts) -> str:
        """The URL as the browser sees it, behind trusted proxies (:meth:`Proxies.page_url`)."""
        return self._proxies.page_url(facts)


def cookie_attributes(config: Config) -> str:
    """What follows ``Path`` and ``Max-Age`` in every cookie of ours: the domain, if set,
    ``HttpOnly; SameSite=Lax``, and ``Secure`` unless ``cookie_secure`` is off."""
    domain = f"; Domain={config.cookie_domain}" if config.cookie_domain else ""
    secure = "; Secure" if config.cookie_secure else ""
    return f"{domain}; HttpOnly; SameSite=Lax{secure}"

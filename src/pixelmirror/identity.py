"""Who is visiting: the signed visitor id, ``_fbp`` / ``_fbc``, client IP, consent and bots.

:class:`Identity` runs on every request, so it is built to be cheap (patterns compiled at
import, settings digested once in ``__init__``) and to never raise on request input: a
malformed cookie, header or address is treated as absent. Only a bad configuration raises,
and it does so at construction.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

from itsdangerous import BadData, TimestampSigner, URLSafeSerializer
from itsdangerous.encoding import base64_decode, base64_encode
from itsdangerous.signer import HMACAlgorithm

from pixelmirror import _domains
from pixelmirror._domains import HOSTNAME, registrable_domain
from pixelmirror.config import Config, ConfigError, IPNetwork
from pixelmirror.facts import RequestFacts
from pixelmirror.normalize import IPAddress, canonical_ip, sha256_hex

__all__ = ["Identity", "Visitor", "is_crawler"]

_log = logging.getLogger("pixelmirror")

VISITOR_SALT = "pixelmirror.visitor"
CARRY_SALT = "pixelmirror.carry"
#: Seconds a carried browser event waits for the next HTML page.
CARRY_MAX_AGE = 600
#: Longest ``Set-Cookie`` value for carried events; browsers cap a cookie near 4096 bytes.
CARRY_MAX_BYTES = 3800
#: Lifetime of ``_fbp`` / ``_fbc``: 90 days, as the pixel sets them.
FB_MAX_AGE = 7_776_000

# A signed visitor cookie is about 60 characters; anything far longer is not ours.
_MAX_VISITOR_COOKIE = 256
_MAX_CARRY_COOKIE = 4096
# A signature from a little in the future is clock skew between our own servers.
_CLOCK_SKEW = 300.0
# Proxy hops walked in X-Forwarded-For / Forwarded before giving up.
_MAX_HOPS = 16

# secrets.token_urlsafe(16): 22 characters of the URL-safe base64 alphabet.
_VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{22}")
# fb.{subdomainIndex}.{creationTimeMs}.{random}[.{appendix}]. The Parameter Builder may add
# an appendix to both cookies, so both accept it (the brief only asked it of _fbc).
_FBP = re.compile(r"fb\.[0-9]{1,2}\.[0-9]{1,16}\.[0-9]{1,20}(?:\.[A-Za-z0-9_-]{1,16})?")
# An fbclid is any cookie-safe character but "." (RFC 6265 cookie-octet minus "."), so the
# value can go into a Set-Cookie as it is and segment 3 is always the whole fbclid.
_FBCLID = r"[\x21\x23-\x2b\x2d\x2f-\x3a\x3c-\x5b\x5d-\x7e]{1,500}"
_FBCLID_ONLY = re.compile(_FBCLID)
_FBC = re.compile(rf"fb\.[0-9]{{1,2}}\.[0-9]{{1,16}}\.({_FBCLID})(?:\.[A-Za-z0-9_-]{{1,16}})?")

_HOST_HEADER = re.compile(r"(?:[A-Za-z0-9_.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")

# Crawlers, link-preview fetchers and HTTP libraries run no JavaScript: a server PageView for
# them is one the pixel never matches. One pattern, run on the lower-cased User-Agent (much
# faster than re.IGNORECASE). Its parts, in order:
# - not a browser's shape: every browser, in-app ones included, starts with "Mozilla/" (old
#   Opera with "Opera/"), so WhatsApp/2.19, Slackbot-LinkExpanding, facebookexternalhit,
#   meta-externalads, curl, Apache-HttpClient or "Python/3.11 aiohttp/3.9" are out at once;
# - what no browser says: a URL, a domain, an e-mail address, or "compatible;" but after
#   MSIE and Konqueror, which really said it ("Mozilla/5.0 (compatible; Go-http-client/1.1)",
#   Google-Site-Verification, GoogleOther, Perplexity-User);
# - words crawlers, fetchers and monitors put in their names, anywhere ("bot" but in CUBOT
#   phones, "preview" for SkypeUriPreview, "http" for most HTTP libraries);
# - by name, the few that otherwise look like a browser (Lighthouse, WebPageTest's PTST, ...),
#   and HTTP libraries wherever they are named.
# "HeadlessChrome" alone is deliberately NOT matched: it runs the pixel, and so do our browser
# tests. The tests check this pattern against a public list of crawler user agents and a table
# of browsers and in-app browsers (Meta's own among them), which must never match.
_CRAWLERS = re.compile(
    r"^(?!mozilla/|opera/)"
    r"|https?:|www\.|@|\(at\)|[a-z0-9]\.(?:com|net|org|io|ai|app|fr|de|ru)\b"
    r"|compatible(?!; msie|; konqueror)"
    r"|(?<!cu)bot|crawl|spider|scrap|slurp|fetch|preview|archiv|monitor|check|scan|proxy"
    r"|validat|index|\bhttp|httrack|client|library|feed|rss|webhook|uptime|probe|analy[sz]"
    r"|screenshot|capture|download|sitemap|harvest|reader|parser|extract|synthetic|inspect"
    r"|-google|google[- ]|googleother|googleagent|lighthouse|ptst/|pingdom|appinsights"
    r"|siteimprove|dareboost|zgrab|outbrain|ips-agent|daumoa|datanyze|hotjar|playwright"
    r"|puppeteer|selenium|gtmetrix|newsai|collapsify|cookiehub|hardenize|manus-user|nitro-"
    r"|scope3|silktide|thousandeyes|sindup|sqwatcher|turingos|\bbw/|dlc/|foregenix|linktiger"
    r"|marketgoo|miniature|pwabuilder|readable/|securityheaders|splash version|rigor\)"
    r"|testlocally|ylt chrome|watchtowr|geedo|newsnow|openvas|printfriendly"
    r"|requests/|urllib|aiohttp|okhttp|curl/|wget|java/|libwww|scrapy|axios|undici|guzzle"
)
# Verdicts by User-Agent: a site sees the same few hundred strings again and again.
_MAX_CACHED_AGENT = 512


@functools.lru_cache(maxsize=4096)
def _crawler_verdict(user_agent: str) -> bool:
    return _CRAWLERS.search(user_agent.lower()) is not None


def is_crawler(user_agent: str | None) -> bool:
    """The built-in crawler check: True for crawlers, link-preview fetchers, HTTP libraries
    and a missing or blank User-Agent; False for browsers, in-app browsers and Headless
    Chrome. Compose it in your own ``is_bot`` hook to add a site's rules."""
    if user_agent is None or not user_agent.strip():
        return True
    if len(user_agent) > _MAX_CACHED_AGENT:  # keep the cache small whatever clients send
        return _CRAWLERS.search(user_agent.lower()) is not None
    return _crawler_verdict(user_agent)


# Values of a "name"-only consent cookie that mean no.
_REFUSALS = frozenset({"0", "false", "no", "deny", "denied"})

_FB_SUFFIX = f"; Path=/; Max-Age={FB_MAX_AGE}"


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


class _Seal:
    """A timestamped HMAC of a value: the first key signs, every key verifies.

    Tokens are :class:`~itsdangerous.TimestampSigner`'s own format (``value.time.signature``),
    but stamped with the caller's clock, so ``now=`` works without patching ``time``. One
    signer per key (newest first, the reverse of itsdangerous' list order) tells which key
    matched, so a token of a retired key can be re-signed.
    """

    __slots__ = ("_digests", "_keys", "_signers")

    def __init__(self, keys: Sequence[str], salt: str) -> None:
        self._signers = tuple(TimestampSigner(key, salt=salt) for key in keys)
        # Each signer's derived key, made once, and its HMAC computed in one C call
        # (hmac.digest) rather than through itsdangerous' hmac.new() with a Python digest
        # wrapper: the same bytes as Signer.get_signature(), on every request with a cookie.
        self._keys = tuple(signer.derive_key() for signer in self._signers)
        self._digests = tuple(_hmac_digest_name(signer) for signer in self._signers)

    def _signature(self, index: int, value: bytes) -> bytes:
        name = self._digests[index]
        if name is None:
            signer = self._signers[index]
            return signer.algorithm.get_signature(self._keys[index], value)
        return hmac.digest(self._keys[index], value, name)

    def seal(self, value: bytes, now: float) -> str:
        stamp = max(0, int(now))
        stamped = value + b"." + base64_encode(stamp.to_bytes((stamp.bit_length() + 7) // 8, "big"))
        signature = base64_encode(self._signature(0, stamped))
        return (stamped + b"." + signature).decode("ascii")

    def open(self, token: str) -> tuple[bytes, float, bool] | None:
        """``(value, signed at, by the newest key)``, or None for anything not ours.

        The same verdicts as ``signer.unsign(token, return_timestamp=True)`` tried with each
        key in turn (the first key whose signature matches tells the timestamp), without
        building a signer call and an exception per key.
        """
        try:
            signed = token.encode("utf-8")
        except UnicodeEncodeError:
            return None  # not text
        stamped, sep, encoded_signature = signed.rpartition(b".")
        if not sep:
            return None
        try:
            signature = base64_decode(encoded_signature)
        except Exception:
            return None
        newest: bool | None = None
        for index in range(len(self._keys)):
            if hmac.compare_digest(signature, self._signature(index, stamped)):
                newest = index == 0
                break
        if newest is None:
            return None  # tampered, or signed with a key we do not have
        value, sep, stamp = stamped.rpartition(b".")
        if not sep:
            return None
        try:
            seconds = int.from_bytes(base64_decode(stamp), "big")
        except Exception:
            return None
        try:
            signed_at = datetime.fromtimestamp(seconds, tz=timezone.utc).timestamp()
        except (ValueError, OverflowError, OSError):
            return None  # a timestamp no clock can hold
        return value, signed_at, newest


def _hmac_digest_name(signer: TimestampSigner) -> str | None:
    """The hashlib name of a signer's HMAC digest, when ``hmac.digest`` can compute it."""
    algorithm = signer.algorithm
    if type(algorithm) is not HMACAlgorithm:
        return None
    name = getattr(algorithm.digest_method(b""), "name", None)
    return name if name in ("sha1", "sha256", "sha512") else None


class Identity:
    """Resolves the visitor of a request, and builds the cookies that remember it.

    Security and privacy defaults:

    - The visitor id is random (``secrets.token_urlsafe(16)``) and travels only in a cookie
      signed with itsdangerous (salt ``pixelmirror.visitor``): ``HttpOnly; SameSite=Lax;
      Path=/``, ``Secure`` unless ``cookie_secure`` is off, host-only unless ``cookie_domain``
      is set. A cookie that is missing, tampered with, signed by an unknown key, older than
      ``cookie_max_age``, oversized or of the wrong shape is replaced by a new id; it is never
      an error. ``secret_key`` is newest first: the first key signs, all keys verify, and a
      cookie of an older key is re-signed once with the newest.
    - ``Set-Cookie`` is sent only for a new or changed cookie, never on every response, so
      pages stay cacheable. The visitor cookie is refreshed (re-signed, full ``Max-Age``)
      only once more than half of ``cookie_max_age`` has passed since it was signed.
    - ``X-Forwarded-*`` and ``Forwarded`` are believed only when the socket peer is inside
      ``trusted_proxies``; otherwise the client IP is the peer itself.
    - No consent, or a crawler while ``bot_filter`` is on: :meth:`resolve` returns None and
      the request gets no pixel, no cookie and no server event. A failing ``consent``
      callable counts as no consent.

    ``_fbp`` / ``_fbc`` are set (only when ``fb_cookies`` is on, and only when new or changed)
    on the registrable domain, without ``HttpOnly`` because the pixel rewrites them. The
    registrable domain is ``cookie_domain`` when the host lies within it, else the host's
    public suffix plus one label, by the Public Suffix List (private section included:
    ``app.github.io`` is a site of its own). A host that is a public suffix itself, an IP
    address or ``localhost`` gets host-only cookies.

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
        self._domain = domain
        self._max_age = config.cookie_max_age
        self._fb_cookies = config.fb_cookies
        self._bot_filter = config.bot_filter
        self._is_bot = is_bot
        self._consent = consent
        self._consent_name: str | None = None
        self._consent_value: str | None = None
        if config.consent_cookie:
            name, sep, value = config.consent_cookie.partition("=")
            self._consent_name = name.strip()
            self._consent_value = value.strip() if sep else None
        self._v4_proxies = tuple(n for n in config.trusted_proxies if n.version == 4)
        self._v6_proxies = tuple(n for n in config.trusted_proxies if n.version == 6)
        # The same few addresses (the proxies' above all) come back on request after request:
        # parse and classify each text once. Bounded, and safe to share between threads.
        self._address: Callable[[str], tuple[str, bool] | None] = functools.lru_cache(maxsize=4096)(
            self._classify
        )

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
        self._visitor_seal = _Seal(config.secret_key, VISITOR_SALT)
        self._carry_seal = _Seal(config.secret_key, CARRY_SALT)
        # Used only for its payload encoding (compact JSON, zlib when shorter, base64url);
        # signing is _Seal's. ``default=str`` keeps a Decimal in custom_data from failing.
        self._carry_payload: URLSafeSerializer = URLSafeSerializer(
            list(reversed(config.secret_key)), salt=CARRY_SALT, serializer_kwargs={"default": str}
        )

    # -- the visitor ------------------------------------------------------------------------

    def resolve(self, facts: RequestFacts, *, now: float | None = None) -> Visitor | None:
        """The request's visitor, or None when it must get no pixel, no cookie and no server
        event (no consent, or a crawler while ``bot_filter`` is on)."""
        now = time.time() if now is None else now
        user_agent = facts.headers.get("user-agent", "").strip() or None
        if self._bot_filter and self._crawler(facts, user_agent):
            return None
        if not self._consented(facts):
            return None
        set_cookies: list[str] = []
        visitor_id = self._visitor_id(facts.cookie_values(self._cookie_name), now, set_cookies)
        peer, trusted = self._peer(facts)
        if set_cookies and self._secure and not self._warned_http:
            self._warn_if_http(facts, trusted)
        fbp, fbc = self._fb(facts, trusted, now, set_cookies)
        return Visitor(
            visitor_id=visitor_id,
            external_id=sha256_hex(visitor_id),
            fbp=fbp,
            fbc=fbc,
            client_ip=self._client_ip(facts, peer, trusted),
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
        scheme, host = self._origin(facts, trusted)
        if scheme != "http" or _is_local(host):
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

    def _crawler(self, facts: RequestFacts, user_agent: str | None) -> bool:
        if self._is_bot is None:
            return is_crawler(user_agent)
        try:
            return bool(self._is_bot(facts))
        except Exception:
            _log.warning(
                "pixelmirror: the is_bot callable failed; using the built-in crawler check",
                exc_info=True,
            )
            return is_crawler(user_agent)

    # -- consent ----------------------------------------------------------------------------

    def _consented(self, facts: RequestFacts) -> bool:
        if self._consent is not None:
            try:
                return bool(self._consent(facts))
            except Exception:
                _log.warning(
                    "pixelmirror: the consent callable failed; treating the request as "
                    "without consent",
                    exc_info=True,
                )
                return False
        if self._consent_name is None:
            return True
        value = facts.cookies.get(self._consent_name)
        if value is None:
            return False
        value = value.strip()
        if self._consent_value is None:
            return bool(value) and value.lower() not in _REFUSALS
        # Exact value, or one item of a comma-separated list ("analytics,marketing").
        return value == self._consent_value or (
            "," in value and self._consent_value in (item.strip() for item in value.split(","))
        )

    # -- _fbp and _fbc ----------------------------------------------------------------------

    def _fb(
        self, facts: RequestFacts, trusted: bool, now: float, set_cookies: list[str]
    ) -> tuple[str | None, str | None]:
        cookies = facts.cookies
        fbp = cookies.get("_fbp")
        if fbp is not None and (len(fbp) > 64 or not _FBP.fullmatch(fbp)):
            fbp = None
        fbc = cookies.get("_fbc")
        stored = _FBC.fullmatch(fbc) if fbc is not None and len(fbc) <= 600 else None
        fbc = stored[0] if stored else None

        fbclid = _fbclid(facts.query)
        if fbclid is None:
            referer = facts.headers.get("referer")
            if referer and "fbclid" in referer:
                fbclid = _fbclid(referer.partition("#")[0].partition("?")[2])
        new_click = fbclid is not None and (stored is None or stored[1] != fbclid)
        millis = int(now * 1000)

        if not self._fb_cookies:
            if new_click:
                # Not stored in a cookie: Meta asks for subdomain index 1 then. The fbclid
                # matches the pixel's own _fbc, so this only adds match quality.
                fbc = f"fb.1.{millis}.{fbclid}"
            return fbp, fbc
        if fbp is not None and not new_click:
            return fbp, fbc

        scheme, host = self._origin(facts, trusted)
        domain, index = self._site(host)
        suffix = _FB_SUFFIX + (f"; Domain={domain}" if domain else "") + "; SameSite=Lax"
        if scheme == "https":
            suffix += "; Secure"
        if fbp is None:
            fbp = f"fb.{index}.{millis}.{secrets.randbelow(2**31)}"
            set_cookies.append(f"_fbp={fbp}{suffix}")
        if new_click:
            fbc = f"fb.{index}.{millis}.{fbclid}"
            set_cookies.append(f"_fbc={fbc}{suffix}")
        return fbp, fbc

    def _site(self, host: str) -> tuple[str | None, int]:
        """``(Domain for the fb cookies or None for host-only, subdomain index)``."""
        name = _hostname(host)
        if name is None or "." not in name or name.endswith(".localhost") or _is_ip(name):
            return None, 0  # IP, localhost, a single-label intranet name, or nonsense
        if self._domain and (name == self._domain or name.endswith("." + self._domain)):
            return self._domain, self._domain.count(".")
        domain = registrable_domain(name)
        if domain is None:  # the host is a public suffix itself: host-only is all it may have
            return None, name.count(".")
        return domain, domain.count(".")

    # -- client IP and page URL -------------------------------------------------------------

    def client_ip(self, facts: RequestFacts) -> str | None:
        """The client's address: the socket peer, unless that is a trusted proxy; then the
        first untrusted address walking ``X-Forwarded-For`` (or, without it, ``Forwarded:
        for=``) from the right. An unparsable hop stops the walk at the last address known.
        """
        peer, trusted = self._peer(facts)
        return self._client_ip(facts, peer, trusted)

    def page_url(self, facts: RequestFacts) -> str:
        """The URL as the browser sees it: ``facts.url``, with the scheme and host of
        ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` (or ``Forwarded: proto= host=``) when the
        peer is a trusted proxy."""
        trusted = self._peer(facts)[1]
        if not trusted:
            return facts.url
        scheme, host = self._origin(facts, trusted)
        query = f"?{facts.query}" if facts.query else ""
        return f"{scheme}://{host}{facts.path}{query}"

    def _peer(self, facts: RequestFacts) -> tuple[str | None, bool]:
        """The canonical peer address, and whether it is a trusted proxy."""
        found = self._address(facts.peer) if facts.peer else None
        return found if found is not None else (None, False)

    def _classify(self, text: str) -> tuple[str, bool] | None:
        """``(canonical address, is a trusted proxy)``, or None when ``text`` is no address."""
        ip = _parse_ip(text)
        if ip is None:
            return None
        networks: tuple[IPNetwork, ...] = self._v4_proxies if ip.version == 4 else self._v6_proxies
        return ip.compressed, any(ip in network for network in networks)

    def _client_ip(self, facts: RequestFacts, peer: str | None, trusted: bool) -> str | None:
        if peer is None:
            return None
        known = peer
        if trusted:
            # X-Forwarded-For wins when both are present: the proxy that sets one may pass a
            # client's forged copy of the other through untouched, so configure the proxy to
            # overwrite the header pixelmirror reads.
            forwarded_for = facts.headers.get("x-forwarded-for")
            if forwarded_for is not None:
                hops = forwarded_for.rsplit(",", _MAX_HOPS)
            else:
                hops = _forwarded_params(facts.headers.get("forwarded"), "for")
            for hop in reversed(hops):
                found = self._address(hop.strip())
                if found is None:
                    break
                known, hop_trusted = found
                if not hop_trusted:
                    break
        return known

    def _origin(self, facts: RequestFacts, trusted: bool) -> tuple[str, str]:
        """Scheme and host the browser used. Of several forwarded values the rightmost
        counts: it was set by the proxy nearest to us, which we trust."""
        scheme, host = facts.scheme, facts.host
        if not trusted:
            return scheme, host
        headers = facts.headers
        proto = headers.get("x-forwarded-proto")
        forwarded_host = headers.get("x-forwarded-host")
        if proto is None and forwarded_host is None and "forwarded" in headers:
            proto = _last(_forwarded_params(headers["forwarded"], "proto"))
            forwarded_host = _last(_forwarded_params(headers["forwarded"], "host"))
        if proto is not None:
            proto = proto.rpartition(",")[2].strip().lower()
            if proto in ("http", "https"):
                scheme = proto
        if forwarded_host is not None:
            forwarded_host = forwarded_host.rpartition(",")[2].strip()
            if _HOST_HEADER.fullmatch(forwarded_host):
                host = forwarded_host
        return scheme, host

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


# ------------------------------------------------------------------------------------------
# Parsing helpers: each returns None for anything it does not understand.


def _is_carried(item: object) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("event_id"), str)
        and isinstance(item.get("custom_data", {}), dict)
    )


def _fbclid(query: str) -> str | None:
    """The first ``fbclid`` of a query string, when it is usable (1-500 cookie-safe
    characters, no ``.``). Case is kept: fbclid is case-sensitive."""
    if "fbclid" not in query:
        return None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "fbclid":
            return value if _FBCLID_ONLY.fullmatch(value) else None
    return None


def _parse_ip(text: str) -> IPAddress | None:
    """An address from a peer or a proxy hop: quotes, ``[...]`` and ports are stripped,
    IPv4-mapped IPv6 becomes IPv4, a zone id is dropped."""
    text = text.strip().strip('"')
    if len(text) > 64:
        return None
    if text.startswith("["):
        text = text[1 : text.find("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return canonical_ip(ipaddress.ip_address(text))
    except ValueError:
        return None


def _forwarded_params(header: str | None, key: str) -> list[str]:
    """The ``key=`` values of an RFC 7239 ``Forwarded`` header, left to right; an element
    without one gives ``""`` (unparsable, so a walk stops there)."""
    if not header:
        return []
    values = []
    for element in header.split(",")[-_MAX_HOPS:]:
        found = ""
        for pair in element.split(";"):
            name, _, value = pair.partition("=")
            if name.strip().lower() == key:
                found = value.strip().strip('"')
                break
        values.append(found)
    return values


def _last(values: list[str]) -> str | None:
    return next((value for value in reversed(values) if value), None)


def _hostname(host: str) -> str | None:
    """The lower-case name of a ``Host`` value, without port, brackets or trailing dot."""
    if not _HOST_HEADER.fullmatch(host):
        return None
    if host.startswith("["):
        return host[1 : host.find("]")].lower()
    name = host.partition(":")[0].rstrip(".").lower()
    return name if HOSTNAME.fullmatch(name) or _is_ip(name) else None


def _is_local(host: str) -> bool:
    """``localhost`` or a loopback address: browsers keep Secure cookies there over http."""
    name = _hostname(host)
    if name is None:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    return _is_ip(name) and ipaddress.ip_address(name).is_loopback


def _is_ip(name: str) -> bool:
    if not (name[-1:].isdigit() or ":" in name):  # no top-level domain ends in a digit
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True

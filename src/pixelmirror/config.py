"""Configuration: ``PIXELMIRROR_*`` environment variables, overridable by keywords.

Every setting is checked once, at construction: a bad value raises :class:`ConfigError`
naming the variable and the form it expects, so a misconfigured app fails at start-up
rather than on a customer's request.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, Literal

from pixelmirror._domains import HOSTNAME, is_public_suffix
from pixelmirror._geo import COUNTRIES
from pixelmirror.accounts import check_partner_agent
from pixelmirror.meta import MAX_EVENTS_PER_REQUEST
from pixelmirror.proxies import IPNetwork
from pixelmirror.urls import masked_url

ENV_PREFIX = "PIXELMIRROR_"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _text(name: str, raw: str) -> str | None:
    return raw.strip() or None


def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{env_name(name)} must be an integer, got {raw!r}") from None


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{env_name(name)} must be a number of seconds, got {raw!r}") from None


def _list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _networks(name: str, raw: str | Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    parts = _list(name, raw) if isinstance(raw, str) else raw
    try:
        return tuple(ipaddress.ip_network(part, strict=False) for part in parts)
    except ValueError:
        raise ConfigError(
            f"{env_name(name)} must be comma-separated IP addresses or networks "
            f"(10.0.0.0/8, ::1), got {raw!r}"
        ) from None


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ConfigError(f"{env_name(name)} must be true or false, got {raw!r}")
    return value in _TRUE


Parser = Callable[[str, str], Any]


def _setting(default: Any, parse: Parser, *, secret: bool = False, url: bool = False) -> Any:
    # ``url``: shown with its password masked; ``secret``: never shown.
    return field(default=default, repr=not secret, metadata={"parse": parse, "url": url})


_DIGITS = re.compile(r"[0-9]+")
_API_VERSION = re.compile(r"v[0-9]+\.[0-9]+")
_COOKIE_NAME = re.compile(r"[A-Za-z0-9_\-.]+")
_ALPHA2 = frozenset(row[0] for row in COUNTRIES)


@dataclass(frozen=True)
class Config:
    """Every pixelmirror setting, validated.

    Build it with :meth:`from_env`. Secrets (the access token, signing keys, app secret) are
    left out of ``repr``, and passwords in URLs (a Redis outbox's) masked, so they cannot
    reach a log line by accident.
    """

    #: Pixel (dataset) id. Without it the middleware passes pages through untouched.
    pixel_id: str | None = _setting(None, _text)
    #: Conversions API token. Without it pixelmirror runs dry: events are built and
    #: validated, logged and counted, never sent.
    access_token: str | None = _setting(None, _text, secret=True)
    #: Keys that sign the visitor cookie, newest first; older ones still verify.
    secret_key: tuple[str, ...] = _setting((), _list, secret=True)
    test_event_code: str | None = _setting(None, _text)
    partner_agent: str | None = _setting(None, _text)
    api_version: str = _setting("v26.0", _text)
    graph_url: str = _setting("https://graph.facebook.com", _text, url=True)
    #: Enables ``appsecret_proof`` on every request.
    app_secret: str | None = _setting(None, _text, secret=True)
    outbox: str = _setting("memory://", _text, url=True)
    #: Where Meta's events go instead of the Graph API: ``file:///path.jsonl`` appends each
    #: batch's request body (no access token) to that file. Default: the Graph API.
    sink: str | None = _setting(None, _text, url=True)
    #: ``thread``: a background thread of this process sends; ``external``: only enqueue,
    #: a ``pixelmirror worker`` sends.
    dispatch: Literal["thread", "external"] = _setting("thread", _text)
    trusted_proxies: tuple[IPNetwork, ...] = _setting((), _networks)
    consent_cookie: str | None = _setting(None, _text)
    #: A request with ``Sec-GPC: 1`` (Global Privacy Control) refuses, whatever else consents.
    honor_gpc: bool = _setting(False, _bool)
    #: Events per request to Meta (at most 1000).
    batch_size: int = _setting(MAX_EVENTS_PER_REQUEST, _int)
    #: Seconds the dispatcher waits for more events before sending a partial batch.
    flush_interval: float = _setting(1.0, _float)
    #: Bound of the memory outbox; overflow is dropped, counted and logged.
    queue_size: int = _setting(100_000, _int)
    #: Events a process holds between its requests and a durable outbox (a SQLite file,
    #: Redis) while its writer thread stores them; overflow is dropped, counted and logged.
    handoff_size: int = _setting(10_000, _int)
    #: Seconds the writer waits for more events to share one outbox write.
    handoff_linger: float = _setting(0.02, _float)
    #: Seconds for one request to Meta (connect, read, write).
    request_timeout: float = _setting(10.0, _float)
    #: Seconds a sender's claim stays its own unrenewed. A live sender renews it every third
    #: of that while the batch is in flight; a dead one's batches are taken over after it.
    lease: float = _setting(30.0, _float)
    #: First retry delay in seconds; it doubles per failed attempt, with jitter.
    retry_backoff: float = _setting(2.0, _float)
    #: Longest retry delay in seconds.
    retry_backoff_max: float = _setting(600.0, _float)
    #: Seconds to wait at exit for pending events to be sent.
    shutdown_timeout: float = _setting(5.0, _float)
    #: The signed first-party visitor id cookie.
    cookie_name: str = _setting("_pm_vid", _text)
    #: ``Domain`` of the visitor cookie; default: none (host-only, the safest).
    cookie_domain: str | None = _setting(None, _text)
    #: ``Secure`` on the visitor cookie; set false only for local http development.
    cookie_secure: bool = _setting(True, _bool)
    #: Lifetime of the visitor cookie in seconds (about 13 months).
    cookie_max_age: int = _setting(34_000_000, _int)
    #: Mirror each injected page's PageView to CAPI.
    pageview: bool = _setting(True, _bool)
    #: Set ``_fbp`` / ``_fbc`` from the server, so even a visit's first event carries them.
    fb_cookies: bool = _setting(True, _bool)
    #: Limited Data Use on both channels (Meta geolocates the user).
    ldu: bool = _setting(False, _bool)
    #: Send no server events for crawlers (Meta's own included): they run no JavaScript.
    bot_filter: bool = _setting(True, _bool)
    #: Let the pixel send automatic button-click and page-metadata events.
    auto_config: bool = _setting(True, _bool)
    #: Bytes of a streamed HTML body held back while looking for ``</head>``.
    max_buffer: int = _setting(512 * 1024, _int)
    #: ``inline``: ids in the page; ``beacon``: the same bytes for every visitor, ids from
    #: a first-party beacon (cache-safe).
    mode: Literal["inline", "beacon"] = _setting("inline", _text)
    #: Where the middleware answers the page's beacon (``window.pixelmirror``).
    beacon_path: str = _setting("/.pixelmirror/beacon", _text)
    #: Events the browser may ask the beacon for; conversions stay server-decided.
    beacon_events: tuple[str, ...] = _setting(
        (
            "PageView",
            "ViewContent",
            "Search",
            "AddToCart",
            "AddToWishlist",
            "CustomizeProduct",
            "FindLocation",
            "Contact",
        ),
        _list,
    )
    #: Beacon events per minute per visitor (an IP gets five times as many).
    beacon_rate: int = _setting(60, _int)
    #: ISO 3166-1 alpha-2 code of the country whose calling code completes a phone number
    #: written without one, when the event's user data names no country.
    default_country: str | None = _setting(None, _text)

    def __post_init__(self) -> None:
        for name in ("secret_key", "beacon_events"):  # keyword overrides given as "a,b"
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, _list(name, getattr(self, name)))
        # Keyword overrides may give strings; ip_network() also accepts networks as they are.
        object.__setattr__(
            self, "trusted_proxies", _networks("trusted_proxies", self.trusted_proxies)
        )
        object.__setattr__(self, "graph_url", self.graph_url.rstrip("/"))
        if self.default_country is not None:
            object.__setattr__(self, "default_country", self.default_country.strip().lower())
        if self.cookie_domain is not None:  # ".Example.com" means example.com to a browser
            object.__setattr__(self, "cookie_domain", self.cookie_domain.strip(".").lower())
        self._validate()

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={_shown(f, getattr(self, f.name))!r}" for f in fields(self) if f.repr
        )
        return f"Config({shown})"

    def _validate(self) -> None:
        def need(ok: bool, name: str, form: str, value: object) -> None:
            if not ok:
                raise ConfigError(f"{env_name(name)} must be {form}, got {value!r}")

        if self.pixel_id is not None:
            need(bool(_DIGITS.fullmatch(self.pixel_id)), "pixel_id", "digits", self.pixel_id)
        for key in self.secret_key:
            # Shown as a length only: the key itself must never reach a log or a traceback.
            need(
                len(key) >= 16,
                "secret_key",
                "keys of at least 16 characters",
                f"<{len(key)} chars>",
            )
        need(
            bool(_API_VERSION.fullmatch(self.api_version)),
            "api_version",
            "a Graph API version like 'v26.0'",
            self.api_version,
        )
        need(
            self.graph_url.startswith(("http://", "https://")),
            "graph_url",
            "an http(s) URL",
            masked_url(self.graph_url),
        )
        if self.partner_agent is not None:
            try:
                check_partner_agent(self.partner_agent)
            except ValueError:
                need(
                    False,
                    "partner_agent",
                    "under 23 characters with two letters",
                    self.partner_agent,
                )
        from pixelmirror.outbox import known_outbox, outbox_forms

        need(known_outbox(self.outbox), "outbox", outbox_forms(), masked_url(self.outbox))
        if self.sink is not None:
            need(
                self.sink.startswith("file:///"),
                "sink",
                "file:///path.jsonl (or unset: Meta's Graph API)",
                masked_url(self.sink),
            )
        need(
            self.dispatch in ("thread", "external"), "dispatch", "thread or external", self.dispatch
        )
        need(
            1 <= self.batch_size <= MAX_EVENTS_PER_REQUEST,
            "batch_size",
            f"between 1 and {MAX_EVENTS_PER_REQUEST}",
            self.batch_size,
        )
        need(self.queue_size >= 1, "queue_size", "a positive integer", self.queue_size)
        need(self.handoff_size >= 1, "handoff_size", "a positive integer", self.handoff_size)
        need(
            0 <= self.handoff_linger <= 1,
            "handoff_linger",
            "between 0 and 1 second",
            self.handoff_linger,
        )
        need(self.max_buffer >= 1024, "max_buffer", "at least 1024 bytes", self.max_buffer)
        need(self.mode in ("inline", "beacon"), "mode", "inline or beacon", self.mode)
        need(
            self.beacon_path.startswith("/") and "?" not in self.beacon_path,
            "beacon_path",
            "an absolute path like /.pixelmirror/beacon",
            self.beacon_path,
        )
        need(self.beacon_rate >= 1, "beacon_rate", "a positive integer", self.beacon_rate)
        need(
            self.cookie_max_age >= 1,
            "cookie_max_age",
            "a positive number of seconds",
            self.cookie_max_age,
        )
        need(
            bool(_COOKIE_NAME.fullmatch(self.cookie_name)),
            "cookie_name",
            "a cookie name (letters, digits, _ and -)",
            self.cookie_name,
        )
        if self.cookie_domain is not None:
            need(
                bool(HOSTNAME.fullmatch(self.cookie_domain)),
                "cookie_domain",
                "a domain name like example.com",
                self.cookie_domain,
            )
            # Browsers refuse a cookie set on a public suffix: every visit would look new.
            need(
                not is_public_suffix(self.cookie_domain),
                "cookie_domain",
                "a registrable domain like example.com, not a public suffix",
                self.cookie_domain,
            )
        if self.default_country is not None:
            need(
                self.default_country in _ALPHA2,
                "default_country",
                "an ISO 3166-1 alpha-2 country code like us or gb",
                self.default_country,
            )
        if self.consent_cookie is not None:
            name = self.consent_cookie.partition("=")[0]
            need(
                bool(_COOKIE_NAME.fullmatch(name)),
                "consent_cookie",
                "a cookie name, optionally with =value",
                self.consent_cookie,
            )
        for name in (
            "flush_interval",
            "request_timeout",
            "lease",
            "retry_backoff",
            "retry_backoff_max",
            "shutdown_timeout",
        ):
            value = getattr(self, name)
            need(value > 0, name, "a positive number of seconds", value)

    @property
    def dry_run(self) -> bool:
        """No access token and no sink in place of Meta's: events are built, validated,
        logged and counted, not sent."""
        return self.access_token is None and self.sink is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read ``PIXELMIRROR_*`` variables from ``environ`` (default: ``os.environ``).

        Keyword ``overrides`` take precedence and use the field names (``pixel_id=...``).
        Environment values are parsed from text; overrides are taken as Python values.
        """
        environ = os.environ if environ is None else environ
        settings = {f.name: f for f in fields(cls)}
        unknown = sorted(set(overrides) - set(settings))
        if unknown:
            raise TypeError(f"unknown pixelmirror settings: {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, setting in settings.items():
            raw = environ.get(env_name(name))
            if raw is not None and raw.strip():
                values[name] = setting.metadata["parse"](name, raw)
        values.update(overrides)
        return cls(**values)


def _shown(setting: Field[Any], value: object) -> object:
    return masked_url(value) if setting.metadata["url"] and isinstance(value, str) else value

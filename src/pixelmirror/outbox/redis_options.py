"""The Redis outbox's URL and options, parsed and checked before any connection is made."""

from __future__ import annotations

from dataclasses import dataclass, fields
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pixelmirror.urls import masked_url

DEFAULT_STREAM = "pixelmirror:events"
DEFAULT_GROUP = "pixelmirror"
DEFAULT_TIMEOUT = 0.5


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Where the events go in Redis and how long to wait for it.

    ``stream`` and ``group`` name the stream and its consumer group; ``consumer`` this
    process's name in the group (None: ``<hostname>:<pid>``); ``maxlen`` caps the stream at
    about that many entries, trimming the oldest; ``timeout`` is how long (seconds) a put or
    a count may wait for Redis; ``lease`` how long a claim is held without a renewal before
    other workers may take it over (None: the dispatcher's).
    """

    stream: str = DEFAULT_STREAM
    group: str = DEFAULT_GROUP
    consumer: str | None = None
    maxlen: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    lease: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("stream", self.stream), ("group", self.group)):
            if not value.strip():
                raise ValueError(f"the Redis outbox {name} name must not be empty")
        if self.consumer is not None and not self.consumer.strip():
            raise ValueError("the Redis outbox consumer name must not be empty")
        if self.maxlen is not None and self.maxlen < 1:
            raise ValueError(f"maxlen must be positive; got {self.maxlen}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds; got {self.timeout}")
        if self.lease is not None and not self.lease > 0:
            raise ValueError(f"lease must be a positive number of seconds; got {self.lease}")

    @classmethod
    def from_url(cls, url: str) -> RedisOptions:
        """The options in the query of ``url`` (``?stream=app:events&maxlen=50000``)."""
        options = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        known = [field.name for field in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(
                f"unknown Redis outbox option(s) {', '.join(unknown)} in "
                f"{masked_url(url)!r}; expected {', '.join(known)}"
            )
        try:
            maxlen = int(options["maxlen"]) if "maxlen" in options else None
            timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
            lease = float(options["lease"]) if "lease" in options else None
        except ValueError:
            raise ValueError(
                "maxlen must be an integer, timeout and lease numbers of seconds; "
                f"got {masked_url(url)!r}"
            ) from None
        return cls(
            stream=options.get("stream", DEFAULT_STREAM),
            group=options.get("group", DEFAULT_GROUP),
            consumer=options.get("consumer"),
            maxlen=maxlen,
            timeout=timeout,
            lease=lease,
        )


def connection_url(url: str) -> str:
    """``url`` without its options, as redis-py opens it; raises ValueError (the password
    masked) unless it is ``redis[s]://host[:port][/db]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(
            f"a Redis outbox URL looks like redis://host:6379/0; got {masked_url(url)!r}"
        )
    if parts.path not in ("", "/") and not parts.path[1:].isdigit():
        raise ValueError(
            f"the Redis database must be a number (redis://host/0); got {masked_url(url)!r}"
        )
    return urlunsplit(parts._replace(query="", fragment=""))

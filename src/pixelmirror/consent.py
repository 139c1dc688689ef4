"""Consent: whether a request may get the pixel, a cookie and a server event at all."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pixelmirror.config import Config
from pixelmirror.facts import RequestFacts

__all__ = ["Consent"]

_log = logging.getLogger("pixelmirror.identity")

# Values of a "name"-only consent cookie that mean no.
_REFUSALS = frozenset({"0", "false", "no", "deny", "denied"})


class Consent:
    """A site's ``consent`` callable, else the ``consent_cookie`` setting (``name`` for any
    value but a refusal, ``name=value`` for that value or a comma-separated list holding it),
    else consent for all. A failing callable counts as no consent. With ``honor_gpc`` a
    request sending Global Privacy Control (``Sec-GPC: 1``) refuses before any of these."""

    __slots__ = ("_callable", "_gpc", "_name", "_value", "asks")

    def __init__(self, config: Config, consent: Callable[[RequestFacts], bool] | None) -> None:
        self._callable = consent
        self._gpc = config.honor_gpc
        self._name: str | None = None
        self._value: str | None = None
        if config.consent_cookie:
            name, sep, value = config.consent_cookie.partition("=")
            self._name = name.strip()
            self._value = value.strip() if sep else None
        #: Whether any request may be refused; False: :meth:`given` is True for all.
        self.asks = self._gpc or self._callable is not None or self._name is not None

    def given(self, facts: RequestFacts) -> bool:
        if self._gpc and facts.headers.get("sec-gpc", "").strip() == "1":
            return False
        if self._callable is not None:
            try:
                return bool(self._callable(facts))
            except Exception:
                _log.warning(
                    "the consent callable failed; treating the request as without consent",
                    exc_info=True,
                )
                return False
        if self._name is None:
            return True
        value = facts.cookies.get(self._name)
        if value is None:
            return False
        value = value.strip()
        if self._value is None:
            return bool(value) and value.lower() not in _REFUSALS
        # Exact value, or one item of a comma-separated list ("analytics,marketing").
        return value == self._value or (
            "," in value and self._value in (item.strip() for item in value.split(","))
        )

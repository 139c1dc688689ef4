"""Accounts: which pixels a request's page belongs to, for platforms serving many advertisers.

A platform (a shop builder, a tag manager) serves many customers from one app. Each customer
has its own pixel(s) and token, whether obtained through Facebook Business Extension, created
by the customer in Events Manager, or issued to the platform's system user on a shared pixel:
to pixelmirror all three are a pixel id whose token a resolver returns at send time
(``PixelMirror(tokens=...)``). The outbox stores pixel ids, never tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pixelmirror.facts import RequestFacts

_DIGITS = re.compile(r"[0-9]+")
_LETTER = re.compile(r"[A-Za-z]")


def check_partner_agent(agent: str) -> str:
    """Meta's rule for ``partner_agent``: under 23 characters, at least two letters."""
    if not (isinstance(agent, str) and len(agent) < 23 and len(_LETTER.findall(agent)) >= 2):
        raise ValueError(
            f"partner_agent must be under 23 characters with two letters; got {agent!r}"
        )
    return agent


@dataclass(frozen=True)
class Account:
    """The pixels of one page and their options.

    Every pixel is initialised once in the page; every event fires once in the browser (a
    ``track`` reaches all initialised pixels) and is mirrored to CAPI once per pixel, with
    the same ``event_id``. ``ldu`` None follows ``PIXELMIRROR_LDU``; ``partner_agent`` None
    follows ``PIXELMIRROR_PARTNER_AGENT``; ``consent`` is an extra gate for this account's
    pages, on top of the global one.
    """

    pixel_ids: tuple[str, ...]
    test_event_code: str | None = None
    ldu: bool | None = None
    partner_agent: str | None = None
    consent: Callable[[RequestFacts], bool] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pixel_ids, str):
            object.__setattr__(self, "pixel_ids", (self.pixel_ids,))
        if not self.pixel_ids or not all(_DIGITS.fullmatch(p) for p in self.pixel_ids):
            raise ValueError(f"an Account needs pixel ids of digits; got {self.pixel_ids!r}")
        if len(set(self.pixel_ids)) != len(self.pixel_ids):
            raise ValueError(f"an Account lists a pixel twice: {self.pixel_ids!r}")
        if self.partner_agent is not None:
            check_partner_agent(self.partner_agent)


AccountSource = Callable[[RequestFacts], "Account | None"]


class HostAccounts:
    """The simple ``accounts=``: one :class:`Account` per host name (port ignored).

    ``HostAccounts({"shop-a.example": Account(("111",)), "shop-b.example": "222"})``; a plain
    pixel id or a list of them stands for an Account with default options. A host not in the
    mapping gets no pixel: its pages pass through untouched.
    """

    def __init__(self, hosts: Mapping[str, Account | str | Iterable[str]]) -> None:
        self._hosts = {
            host.lower(): account if isinstance(account, Account) else Account(_ids(account))
            for host, account in hosts.items()
        }

    def __call__(self, facts: RequestFacts) -> Account | None:
        host = facts.host.rsplit(":", 1)[0] if not facts.host.endswith("]") else facts.host
        return self._hosts.get(host.lower())


def _ids(pixels: str | Iterable[str]) -> tuple[str, ...]:
    return (pixels,) if isinstance(pixels, str) else tuple(pixels)

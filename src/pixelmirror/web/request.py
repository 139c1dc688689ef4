"""``PageRequest``: one page on its way out, and the whole protocol an adapter drives.

An adapter (WSGI, ASGI, a framework's middleware) turns its request into
:class:`~pixelmirror.facts.RequestFacts`, asks ``pages.start(facts)`` for a
:class:`PageRequest` (None: pass the request through untouched) and then:

1. runs the app inside ``with request:`` (the visit is the current one there, for ``@track``);
2. at the response's start calls :meth:`PageRequest.respond`: headers to start with now, or
   None to hold the start back;
3. while :attr:`PageRequest.holding`, passes each body chunk to :meth:`PageRequest.feed`,
   which answers the headers to start with (once, when it lets go) and the bytes to send;
   :meth:`PageRequest.release` lets go at once (a body the adapter cannot feed);
4. calls :meth:`PageRequest.done` once the response is over, whatever happened.

A page that places the snippet itself (a template tag) asks :meth:`PageRequest.place` for it;
a response that carries those bytes starts with :meth:`PageRequest.respond_placed` instead.

None of these raises: a failure is logged and the response goes out as the app made it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextvars import Token
from types import TracebackType
from typing import Protocol

from pixelmirror.config import Config
from pixelmirror.tracking import Visit, activate, deactivate
from pixelmirror.web.headers import rewrite_headers
from pixelmirror.web.response import Headers, HeldPage, Plan

logger = logging.getLogger("pixelmirror.web")


class PageRules(Protocol):
    """What a page request asks of :class:`~pixelmirror.web.pages.Pages`."""

    config: Config

    def plan(
        self, visit: Visit, status: int, headers: Sequence[tuple[str, str]]
    ) -> Plan | None: ...

    def finish(self, visit: Visit, status: int, *, injected: bool) -> None: ...


class PageRequest:
    """One request's page: the plan, and the body held until the snippet has its place."""

    __slots__ = (
        "_done",
        "_held",
        "_injected",
        "_placed",
        "_rules",
        "_token",
        "status",
        "visit",
    )

    def __init__(self, rules: PageRules, visit: Visit) -> None:
        self._rules = rules
        self.visit = visit
        #: The response's status, once it started; None before.
        self.status: int | None = None
        self._held: HeldPage | None = None
        self._injected = False
        self._placed: bytes | None = None
        self._done = False
        self._token: Token[Visit | None] | None = None

    def __enter__(self) -> PageRequest:
        self._token = activate(self.visit)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            deactivate(self._token)
            self._token = None

    @property
    def holding(self) -> bool:
        """The response's start is held back: body chunks go through :meth:`feed`."""
        return self._held is not None

    def respond(self, status: int, headers: Headers) -> Headers | None:
        """The headers to start the response with now (``headers`` itself when they stay as
        they are), or None: hold the start (and the body) until :meth:`feed` lets go."""
        self.status = status
        self._held = None
        plan = self._plan(status, headers)
        if plan is None:
            return headers
        if plan.snippet is None:
            return plan.apply(headers)
        self._held = HeldPage(plan, headers, self._rules.config.max_buffer)
        return None

    def _plan(self, status: int, headers: Headers) -> Plan | None:
        try:
            return self._rules.plan(self.visit, status, headers)
        except Exception:
            logger.exception("planning the response failed; passing it through")
            return None

    def place(self, nonce: str | None = None) -> bytes:
        """The snippet for a page that places it itself, b"" when the page gets none.

        The response's headers are not known yet: it is planned as a successful HTML page
        under a policy with ``nonce``. The same bytes on every call of one request.
        """
        if self._placed is None:
            headers = [("Content-Type", "text/html")]
            if nonce:
                headers.append(("Content-Security-Policy", f"script-src 'nonce-{nonce}'"))
            plan = self._plan(200, headers)
            self._placed = plan.snippet if plan is not None and plan.snippet else b""
        return self._placed

    @property
    def placed(self) -> bytes | None:
        """The snippet :meth:`place` gave the page, if it asked."""
        return self._placed or None

    def respond_placed(self, status: int, headers: Headers) -> Headers:
        """The headers to start a response with that carries :meth:`place`'s snippet: those of
        an injected page (cookies, caching), the body untouched; its PageView is mirrored."""
        self.status = status
        self._held = None
        plan = self._plan(status, headers)
        if plan is None:
            return headers
        if plan.snippet is None:  # not a page after all (a HEAD request, a redirect)
            return plan.apply(headers)
        self._injected = True
        self._say_fired(plan)
        return rewrite_headers(
            headers, added_length=0, set_cookies=plan.cookies, private=plan.private
        )

    def replaced(self, status: int) -> None:
        """An error page replaces the response (WSGI's ``exc_info``): it goes as it is."""
        self.status = status
        self._held = None

    def feed(self, chunk: bytes, *, more: bool) -> tuple[Headers | None, bytes]:
        """The headers to start with (only when it lets go of a held start) and the bytes to
        send for this chunk of the app's body: ``(None, b"")`` while it holds on."""
        held = self._held
        if held is None:
            return None, chunk
        try:
            decided = held.feed(chunk, more=more)
        except Exception:
            logger.exception("injection failed; passing the page through")
            decided = held.give_up()
        if decided is None:
            return None, b""
        self._held = None
        self._injected = held.injected
        if held.injected:
            self._say_fired(held.plan)
        return decided

    def _say_fired(self, plan: Plan) -> None:
        """Log what the page fires, once the snippet is really in it."""
        if (plan.page_view or plan.fired) and logger.isEnabledFor(logging.DEBUG):
            fired = [f"PageView eventID={plan.page_view}"] if plan.page_view else []
            fired += (f"{e.name} eventID={e.event_id}" for e in plan.fired)
            logger.debug("browser -> %s %s", self.visit.facts.path, ", ".join(fired))

    def release(self) -> tuple[Headers, bytes]:
        """Let go of a held start now: the page as the app made it, with the plan's fallback
        headers, and the bytes held so far."""
        held = self._held
        assert held is not None, "release() is for a held response"
        self._held = None
        return held.give_up()

    def done(self) -> None:
        """The response is over: mirror the request's events. Once; never raises."""
        if self._done:
            return
        self._done = True
        try:
            self._rules.finish(self.visit, self.status or 500, injected=self._injected)
        except Exception:
            logger.exception("mirroring the request's events failed")

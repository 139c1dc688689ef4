"""What a destination's answer asks of a sender, whatever the destination.

Every sink raises one of these when a batch was not delivered, and the dispatcher acts on
the class alone:

* :class:`TransientError`: try again later (after ``retry_after`` seconds at least, when the
  destination said so);
* :class:`AccessError`: a person must fix the credential; sending more only burns the queue;
* :class:`RequestError`: an :class:`AccessError` about the request itself (its
  configuration), which every batch would fail alike;
* :class:`InvalidEventsError`: the destination named an event of the batch as the fault.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from typing_extensions import Unpack


class ErrorFacts(TypedDict, total=False):
    """What a destination said about a refusal, as :class:`DeliveryError` keeps it."""

    status: int | None
    code: int | None
    subcode: int | None
    user_message: str | None
    fbtrace_id: str | None


class DeliveryError(Exception):
    """A destination did not take a batch; carries its own fields when it sent them
    (``fbtrace_id`` is Meta's trace id of the request)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        user_message: str | None = None,
        fbtrace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.subcode = subcode
        self.user_message = user_message
        self.fbtrace_id = fbtrace_id

    def __str__(self) -> str:
        parts = [self.message]
        if self.user_message and self.user_message not in self.message:
            parts.append(self.user_message)
        facts = [
            f"{label} {value}"
            for label, value in (
                ("HTTP", self.status),
                ("code", self.code),
                ("subcode", self.subcode),
                ("fbtrace_id", self.fbtrace_id),
            )
            if value is not None
        ]
        return ": ".join(parts) + (f" ({', '.join(facts)})" if facts else "")


class TransientError(DeliveryError):
    """Worth retrying. ``retry_after`` is the wait in seconds the destination asked for."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, **facts: Unpack[ErrorFacts]
    ) -> None:
        super().__init__(message, **facts)
        self.retry_after = retry_after


class AccessError(DeliveryError):
    """The credential or its permissions need fixing by a person; no event is at fault.

    ``token_fingerprint`` names the refused credential (a hash, never the credential), or
    is None when there was none to send.
    """

    token_fingerprint: str | None = None


class RequestError(AccessError):
    """The destination refused the request itself, not an event in it: its configuration
    needs fixing, and every batch would fail the same way."""


class InvalidEventsError(DeliveryError):
    """The destination rejected the whole batch, naming an event in it."""

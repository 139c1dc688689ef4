"""Which access tokens the fake takes, for which pixels; which were revoked."""

from __future__ import annotations

from collections.abc import Collection, Mapping

__all__ = ["TokenBook"]


class TokenBook:
    """The fake's token model. Not locked: :class:`FakeGraphAPI` holds its lock around calls.

    A token is valid for a pixel when it is not revoked and is either valid everywhere
    (``None`` = any token is) or listed for that pixel; ``None`` known pixels = any pixel exists.
    """

    def __init__(self, tokens: Collection[str] | Mapping[str, Collection[str]] | None) -> None:
        self._all: set[str] | None
        self._by_pixel: dict[str, set[str]] = {}
        self._known_pixels: set[str] | None = None
        self._revoked: set[str] = set()
        if tokens is None:
            self._all = None
        elif isinstance(tokens, Mapping):
            self._all = set()
            self._by_pixel = {str(p): _token_set(t) for p, t in tokens.items()}
            self._known_pixels = set(self._by_pixel)
        else:
            self._all = _token_set(tokens)

    def revoke(self, token: str) -> None:
        self._revoked.add(token)
        if self._all is not None:
            self._all.discard(token)
        for tokens in self._by_pixel.values():
            tokens.discard(token)

    def grant(self, token: str, pixel_id: str | None) -> None:
        self._revoked.discard(token)
        if pixel_id is None:
            if self._all is not None:
                self._all.add(token)
            return
        self._by_pixel.setdefault(pixel_id, set()).add(token)
        if self._known_pixels is not None:
            self._known_pixels.add(pixel_id)

    def revoked(self, token: str) -> bool:
        return token in self._revoked

    def known(self, token: str) -> bool:
        """Whether the token is valid for some pixel."""
        if token in self._revoked:
            return False
        if self._all is None or token in self._all:
            return True
        return any(token in tokens for tokens in self._by_pixel.values())

    def allows(self, token: str, pixel_id: str) -> bool:
        """Whether the token is valid for this pixel (and the pixel exists)."""
        if token in self._revoked:
            return False
        if self._known_pixels is not None and pixel_id not in self._known_pixels:
            return False
        if self._all is None or token in self._all:
            return True
        return token in self._by_pixel.get(pixel_id, ())


def _token_set(tokens: Collection[str]) -> set[str]:
    # A lone string is a Collection[str] too; take it as one token, not its characters.
    return {tokens} if isinstance(tokens, str) else set(tokens)

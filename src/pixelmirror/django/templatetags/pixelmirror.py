"""``{% load pixelmirror %}{% pixelmirror %}``: the snippet where the template puts it.

For pages that place it themselves (in ``<head>``, before scripts that call ``fbq``); the
middleware then leaves the page alone and still mirrors its PageView, with the same event id.
``{% pixelmirror nonce=csp_nonce %}`` gives the script a Content-Security-Policy nonce.
"""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString, mark_safe

from pixelmirror.django.middleware import current_page

register = template.Library()


@register.simple_tag(name="pixelmirror")
def pixelmirror_snippet(nonce: str | None = None) -> SafeString:
    """The page's snippet; empty outside a page pixelmirror serves (no consent, a crawler)."""
    page = current_page()
    if page is None:
        return mark_safe("")
    # ASCII, and every value in it escaped for a script (escaping.safe_json).
    return mark_safe(page.place(nonce).decode("ascii"))

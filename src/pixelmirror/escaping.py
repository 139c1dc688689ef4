"""Pure: how data is written into a page, for the snippet.

:func:`safe_json` writes a value as JSON under the one JSON policy of
:func:`~pixelmirror.events.json_default` (the server copy's) that cannot close the
``<script>`` element or open an HTML comment, whatever the data holds; :func:`attribute`
escapes text for a double-quoted HTML attribute. Both answer ASCII.
"""

from __future__ import annotations

import html
import json
import re

from pixelmirror.events import json_default

__all__ = ["URL_PLAIN", "attribute", "json_string", "safe_json", "script_safe"]

# Characters that could end the script element or start a comment (``</script``, ``<!--``,
# ``-->``), plus JavaScript line terminators that JSON allows raw. ``ensure_ascii`` already
# escapes the latter; they stay here so the guarantee does not rest on that flag alone.
_SCRIPT_SAFE = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)

# What json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False,
# default=json_default) uses, made once: json.dumps builds a new encoder for every call
# with arguments, which costs more than encoding the short values of a snippet.
_ENCODER = json.JSONEncoder(
    ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=json_default
)
#: A string as a JSON string, in ASCII: what the encoder uses for every string.
json_string = json.encoder.encode_basestring_ascii

# Characters urlencode() leaves as they are (and html.escape too): pixel ids and event ids
# are made of them, so the usual image URL needs neither.
URL_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")


def safe_json(value: object) -> str:
    """``value`` as compact ASCII JSON that is safe inside an inline ``<script>``.

    ``<``, ``>`` and ``&`` become ``\\u003c``, ``\\u003e``, ``\\u0026`` (U+2028/U+2029 are
    escaped too), so no data can close the element or open a comment. Key order is kept as
    given. Everything else follows :func:`~pixelmirror.events.json_default`, the policy the
    server copy is serialised with.

    :raises ValueError: for NaN or infinity, or a value JSON cannot represent.
    """
    if type(value) is dict and all(type(k) is type(v) is str for k, v in value.items()):
        # A flat dict of strings ({"eventID": ...}, {"external_id": ...}): what the encoder
        # makes of it, without setting up its machinery for one level.
        text = (
            "{" + ",".join([json_string(k) + ":" + json_string(v) for k, v in value.items()]) + "}"
        )
    else:
        text = _json_text(value)
    return script_safe(text)


def _json_text(value: object) -> str:
    try:
        return _ENCODER.encode(value)
    except ValueError as exc:  # NaN or infinity
        raise ValueError(f"browser data must be finite numbers: {exc}") from None
    except TypeError as exc:
        raise ValueError(f"browser data must be JSON values: {exc}") from None


def script_safe(text: str) -> str:
    """JSON text made safe inside a ``<script>``, as :func:`safe_json` makes it."""
    # Most values hold none of these: skip the per-character translation then.
    if "<" in text or ">" in text or "&" in text or not text.isascii():
        return text.translate(_SCRIPT_SAFE)
    return text


def attribute(value: str) -> str:
    """``value`` escaped for a double-quoted HTML attribute, as ASCII (character references)."""
    escaped = html.escape(value, quote=True)
    return escaped.encode("ascii", "xmlcharrefreplace").decode("ascii")

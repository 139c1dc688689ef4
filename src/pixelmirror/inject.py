"""Where the snippet goes: a streaming scanner over a page's bytes.

Pure, no framework imports: every held page goes through it, so it works on raw bytes and
never decodes or re-encodes a body. Which responses get the snippet, and their headers after
the splice, are :mod:`pixelmirror.web.headers`' part.
"""

from __future__ import annotations

import re

from pixelmirror.snippet import MARKER

__all__ = ["InsertionScanner"]

# ---- insertion point ---------------------------------------------------------------------------
#
# A streaming subset of the HTML tokenizer: enough of its states to tell a real ``</head`` or
# ``<body ...>`` from one inside a comment, a script, a style, a title or any other element
# whose content is text. It works on bytes (every byte that matters is ASCII) and keeps its
# state between chunks; a construct cut by a chunk boundary keeps at most _LOOKAHEAD bytes
# aside, so each byte is examined a bounded number of times, however the page is cut.

# Tokenizer states (a subset; see each branch of InsertionScanner._run).
_DATA = 0
_BOGUS_COMMENT = 1  # ``<!...>``, ``<?...>``, ``</`` + non-letter: up to the next ``>``
_COMMENT_START = 2
_COMMENT_START_DASH = 3
_COMMENT = 4
_COMMENT_END_DASH = 5
_COMMENT_END = 6
_COMMENT_END_BANG = 7
_TAG_NAME = 8  # a tag name too long to be one we care about
_BEFORE_ATTR = 9  # also "after a quoted value" and "self-closing": they behave alike
_ATTR_NAME = 10
_AFTER_ATTR = 11
_BEFORE_VALUE = 12
_DOUBLE_QUOTED = 13
_SINGLE_QUOTED = 14
_UNQUOTED = 15
_TEXT = 16  # inside a raw-text or RCDATA element, up to its end tag
_SCRIPT = 17
_SCRIPT_ESCAPED = 18  # script data after ``<!--``
_SCRIPT_DOUBLE_ESCAPED = 19  # ... and then ``<script``: its ``</script>`` does not end it
_PLAINTEXT = 20  # after ``<plaintext>`` everything is text: no insertion point can follow
_AFTER_BODY = 21  # just after ``<body ...>``: unless the snippet is already there, the point

# Elements whose content the tokenizer reads as text up to their own end tag (``noscript``
# as a browser with scripting on reads it).
_TEXT_ELEMENTS = frozenset(
    {b"title", b"textarea", b"style", b"xmp", b"iframe", b"noembed", b"noframes", b"noscript"}
)
_LONGEST_NAME = max(len(name) for name in (*_TEXT_ELEMENTS, b"plaintext", b"script", b"body"))

# Bytes a construct may need before the scanner can tell what it is: ``<`` + the snippet's
# marker + the byte after it (tag names, ``<!--`` and end tags in text need fewer).
_LOOKAHEAD = len(MARKER) + 1
_PROBE = 2 * _LOOKAHEAD
_ATTR_NAME_END = b"\t\n\f\r />="

_SPACE = re.compile(rb"[\t\n\f\r ]*")
_SPACE_OR_SLASH = re.compile(rb"[\t\n\f\r /]*")
_NAME_CHARS = re.compile(rb"[^\t\n\f\r />]*")
_ATTR_NAME_CHARS = re.compile(rb"[^\t\n\f\r />=]*")
_UNQUOTED_CHARS = re.compile(rb"[^\t\n\f\r >]*")

_END = rb"(?=[\t\n\f\r />])"
_NAMES = rb"(?:body|script|plaintext|" + b"|".join(sorted(_TEXT_ELEMENTS)) + rb")"
# A complete ordinary start or end tag (not ``</head``, ``<body`` or an element read as
# text), its attributes read as the tokenizer reads them: a quote opens a value only after
# ``=``, and a value once begun must be complete. Each piece matches in one way only (names
# and unquoted values are maximal), so a tag cut by the chunk's end fails in linear time.
_ATTRIBUTE = (
    rb"[^\t\n\f\r />][^\t\n\f\r />=]*(?![^\t\n\f\r />=])"
    rb"(?:[\t\n\f\r ]*=[\t\n\f\r ]*"
    rb"""(?:"[^"]*"|'[^']*'|[^\t\n\f\r >"'][^\t\n\f\r >]*(?![^\t\n\f\r >])|(?=>))"""
    rb"|(?![\t\n\f\r ]*=))"
)
# Spaces and slashes between attributes run in one repeat of their own: the engine pays per
# round of a group repeat, not per byte of a character repeat.
_TAG_TAIL = rb"[\t\n\f\r /]*(?:" + _ATTRIBUTE + rb"[\t\n\f\r /]*)*>"
# A tag name after its first letter, and the rest of the tag.
_NAME_AND_TAIL = rb"[^\t\n\f\r />]*(?![^\t\n\f\r />])" + _TAG_TAIL
_TEXT_NAMES = b"|".join(sorted(_TEXT_ELEMENTS))
# Text and what holds no insertion point, all there: ordinary tags, doctypes, and elements
# read as text with their end tag (a script only without ``<!--``, whose escapes the state
# machine follows, and not the snippet's own). All the scanner would step over one by one;
# it stops at a ``<`` that may matter, or one cut by the end of the bytes, where the state
# machine takes over. Text runs between the markup rather than as a round of its own, and
# tags whose first letter starts none of the names that matter (html, head, meta, link, div,
# ...) skip the look at those names: the alternatives match disjoint tags, so their order
# only decides how soon the engine finds the one that fits.
_ORDINARY = re.compile(
    rb"[^<]*(?:(?:"
    rb"<[ac-hj-moqru-wyzAC-HJ-MOQRU-WYZ]%(name_and_tail)s"
    rb"|</[a-gi-zA-GI-Z]%(name_and_tail)s"
    rb"|<(?i:(%(text)s))%(end)s%(tail)s[^<]*(?:<(?!/(?i:\1)%(end)s)[^<]*)*</(?i:\1)%(end)s%(tail)s"
    rb"|<(?!%(marker)s[\t\n\f\r />=])(?i:script)%(end)s%(tail)s"
    rb"[^<]*(?:<(?!!--|/(?i:script)%(end)s)[^<]*)*</(?i:script)%(end)s%(tail)s"
    rb"|<![A-Za-z][^>]*>"
    rb"|<(?!(?i:%(names)s)%(end)s)[A-Za-z]%(name_and_tail)s"
    rb"|</(?!(?i:head)%(end)s)[A-Za-z]%(name_and_tail)s"
    rb")[^<]*)*"
    % {
        b"names": _NAMES,
        b"end": _END,
        b"name_and_tail": _NAME_AND_TAIL,
        b"tail": _TAG_TAIL,
        b"text": _TEXT_NAMES,
        b"marker": MARKER[1:],
    }
)
# The rest of a tag after its name, when it is all there: the attribute states in one go.
_ATTRIBUTES = re.compile(_TAG_TAIL)
# Bytes one match of _ORDINARY may cover: the regex engine keeps a little state per tag.
_WINDOW = 64 * 1024

# The start of most pages: text, a doctype and plain head tags (``html``, ``head``, ``meta``,
# ``link``, ``base`` in lower case, with names and double-quoted values, ``<title>`` with
# its text), all of which _ORDINARY steps over too, and then, in group 1, the ``</head``
# that is the point. Fewer alternatives and no lookaheads at names that matter, so about
# twice as fast; the scanner starts a page with it and, without that ``</head``, goes on the
# general way from the first thing it does not know. Possessive throughout: no shorter
# match of any part lets the rest match, so the engine keeps no state to backtrack to (a
# third fewer instructions).
_PLAIN_HEAD = re.compile(
    rb"[^<]*+(?:<(?:"
    rb"(?:html|head|meta|link|base)"
    rb"""(?:[\t\n\f\r ]++[a-z-]++(?:="[^"]*+"|(?=[\t\n\f\r />])))*+[\t\n\f\r ]*+/?>"""
    rb"|title>[^<]*+</title>"
    rb"|![A-Za-z][^>]*+>"
    rb")[^<]*+)*+"
    rb"(</head(?=[\t\n\f\r />]))?"
)

_SCRIPT_END = rb"</script" + _END
# What ends (or changes) each script state, and the prefixes to watch for at a chunk's end.
_SCRIPT_PATTERNS: dict[int, tuple[re.Pattern[bytes], tuple[bytes, ...]]] = {
    _SCRIPT: (re.compile(rb"<!--|" + _SCRIPT_END, re.IGNORECASE), (b"<!--", b"</script")),
    _SCRIPT_ESCAPED: (
        re.compile(rb"-->|<(/?)script" + _END, re.IGNORECASE),
        (b"-->", b"</script", b"<script"),
    ),
    _SCRIPT_DOUBLE_ESCAPED: (
        re.compile(rb"-->|" + _SCRIPT_END, re.IGNORECASE),
        (b"-->", b"</script"),
    ),
}
_TEXT_END = {
    name: (re.compile(rb"</" + name + _END, re.IGNORECASE), (b"</" + name,))
    for name in _TEXT_ELEMENTS
}


def _cut_at(data: bytes, start: int, prefixes: tuple[bytes, ...]) -> int:
    """Where, from ``start``, a tail of ``data`` may begin one of ``prefixes`` (or len)."""
    end = len(data)
    for at in range(max(start, end - max(len(p) for p in prefixes)), end):
        tail = data[at:].lower()
        if any(p.startswith(tail) for p in prefixes):
            return at
    return end


class InsertionScanner:
    """Finds where the snippet goes in a page fed chunk by chunk, in one pass.

    The place is just before the page's real ``</head`` or, when ``<body ...>`` comes first,
    just after that tag; a ``</head>`` or ``<body>`` inside a comment, a script, a style, a
    title, a textarea or another element read as text does not count. :attr:`point` is that
    byte offset once known; :attr:`marked` says the page already carries a pixelmirror
    snippet before it (nothing to add); :attr:`done` says more bytes can change nothing.
    """

    __slots__ = (
        "_after_body",
        "_offset",
        "_opened",
        "_pending",
        "_state",
        "_text_end",
        "examined",
        "marked",
        "point",
    )

    def __init__(self) -> None:
        #: Offset in the page of the next chunk's first byte.
        self._offset = 0
        #: The start of a construct cut by the last chunk's end (at most _LOOKAHEAD bytes).
        self._pending = b""
        self._state = _DATA
        #: The start tag being read, when its name matters: body, script, a text element.
        self._opened = b""
        self._text_end: tuple[re.Pattern[bytes], tuple[bytes, ...]] | None = None
        self._after_body = 0
        self.point: int | None = None
        self.marked = False
        #: Bytes stepped over so far, a carried construct's bytes again in the next chunk:
        #: the work done, which tests hold to the page size.
        self.examined = 0

    @property
    def done(self) -> bool:
        """Whether more bytes can change nothing: a point, a marker, or ``<plaintext>``."""
        return self.point is not None or self.marked or self._state == _PLAINTEXT

    def feed(self, chunk: bytes) -> int | None:
        """Scan the next ``chunk`` of the page; :attr:`point` once it is known."""
        offset = self._offset
        if not chunk or (offset and self.done):  # nothing is done before the first bytes
            return self.point
        self._offset = offset + len(chunk)
        pos = 0
        pending = self._pending
        if pending:
            # Settle the cut construct on a small joined probe, then go on in the chunk itself.
            probe = pending + chunk[:_PROBE]
            self._pending = b""
            stop = self._run(probe, 0, offset - len(pending))
            if self.done:
                return self.point
            if stop < len(probe) and len(chunk) <= _PROBE:
                self._pending = probe[stop:]
                return None
            pos = stop - len(pending)
        elif not offset:  # the page's first bytes
            plain = _PLAIN_HEAD.match(chunk, 0, _WINDOW)
            assert plain is not None  # it matches the empty string
            self.examined += plain.end()
            if plain.start(1) >= 0:
                self.point = plain.start(1)
                return self.point
            pos = plain.end()
        stop = self._run(chunk, pos, offset)
        if stop < len(chunk) and not self.done:
            self._pending = chunk[stop:]
        return self.point

    def end(self) -> int | None:
        """The page ends here: a ``<body ...>`` at its very end still takes the snippet."""
        if self._state == _AFTER_BODY and not self.done:
            self.point = self._after_body
        return self.point

    def _run(self, data: bytes, pos: int, base: int) -> int:
        """Scan ``data`` from ``pos`` (``base`` is its offset in the page).

        Answers where it stopped: ``len(data)``, or the start of a construct that needs more
        bytes to be told apart, or just past the point or the marker.
        """
        end = len(data)
        state = self._state
        start = pos
        while pos < end:
            if state == _DATA:
                pos = _ORDINARY.match(data, pos, pos + _WINDOW).end()  # type: ignore[union-attr]
                if pos >= end:
                    pos = end
                    break
                if data[pos] != 0x3C:  # the window ended in text
                    continue
                decided = self._markup(data, pos, base)
                if decided is None:  # cut: keep it for the next chunk
                    break
                state, pos = decided
                if self.point is not None or self.marked:
                    break
            elif state == _BOGUS_COMMENT:
                found = data.find(b">", pos)
                if found < 0:
                    pos = end
                else:
                    state, pos = _DATA, found + 1
            elif state == _COMMENT:
                found = data.find(b"-", pos)
                if found < 0:
                    pos = end
                else:
                    state, pos = _COMMENT_END_DASH, found + 1
            elif state <= _COMMENT_END_BANG:
                state, pos = _comment_step(state, data[pos]), pos + 1
                if state < 0:  # reconsume the byte as comment text
                    state, pos = _COMMENT, pos - 1
            elif state == _TAG_NAME:
                pos = _NAME_CHARS.match(data, pos).end()  # type: ignore[union-attr]
                state = _BEFORE_ATTR
            elif state == _BEFORE_ATTR:
                pos = _SPACE_OR_SLASH.match(data, pos).end()  # type: ignore[union-attr]
                if pos < end:
                    if data[pos] == 0x3E:  # >
                        state, pos = self._tag_end(pos + 1, base)
                        if self.point is not None:
                            break
                    else:  # any other byte, even ``=`` or a quote, starts a name
                        state, pos = _ATTR_NAME, pos + 1
            elif state == _ATTR_NAME:
                pos = _ATTR_NAME_CHARS.match(data, pos).end()  # type: ignore[union-attr]
                if pos < end:
                    byte = data[pos]
                    if byte == 0x3D:  # =
                        state, pos = _BEFORE_VALUE, pos + 1
                    elif byte == 0x3E:
                        state, pos = self._tag_end(pos + 1, base)
                        if self.point is not None:
                            break
                    else:  # / or whitespace
                        state, pos = (_BEFORE_ATTR if byte == 0x2F else _AFTER_ATTR), pos + 1
            elif state == _AFTER_ATTR:
                pos = _SPACE.match(data, pos).end()  # type: ignore[union-attr]
                if pos < end:
                    byte = data[pos]
                    if byte == 0x3D:
                        state, pos = _BEFORE_VALUE, pos + 1
                    elif byte == 0x3E:
                        state, pos = self._tag_end(pos + 1, base)
                        if self.point is not None:
                            break
                    else:
                        state, pos = (_BEFORE_ATTR if byte == 0x2F else _ATTR_NAME), pos + 1
            elif state == _BEFORE_VALUE:
                pos = _SPACE.match(data, pos).end()  # type: ignore[union-attr]
                if pos < end:
                    byte = data[pos]
                    if byte == 0x22:  # "
                        state, pos = _DOUBLE_QUOTED, pos + 1
                    elif byte == 0x27:  # '
                        state, pos = _SINGLE_QUOTED, pos + 1
                    elif byte == 0x3E:
                        state, pos = self._tag_end(pos + 1, base)
                        if self.point is not None:
                            break
                    else:
                        state = _UNQUOTED
            elif state in (_DOUBLE_QUOTED, _SINGLE_QUOTED):
                found = data.find(b'"' if state == _DOUBLE_QUOTED else b"'", pos)
                if found < 0:
                    pos = end
                else:  # after a quoted value the tokenizer reads as before a name
                    state, pos = _BEFORE_ATTR, found + 1
            elif state == _UNQUOTED:
                pos = _UNQUOTED_CHARS.match(data, pos).end()  # type: ignore[union-attr]
                if pos < end:
                    if data[pos] == 0x3E:
                        state, pos = self._tag_end(pos + 1, base)
                        if self.point is not None:
                            break
                    else:
                        state, pos = _BEFORE_ATTR, pos + 1
            elif state == _TEXT:
                assert self._text_end is not None
                pattern, prefixes = self._text_end
                match = pattern.search(data, pos)
                if match is None:
                    pos = _cut_at(data, pos, prefixes)
                    break
                state, pos = _BEFORE_ATTR, match.end()  # the end tag's own attributes
                self._text_end = None
            elif state == _AFTER_BODY:
                # A head-less page that already went through pixelmirror has the snippet
                # right here.
                if end - pos <= len(MARKER) and MARKER.startswith(data[pos:]):
                    break
                if data.startswith(MARKER, pos) and data[pos + len(MARKER)] in _ATTR_NAME_END:
                    self.marked = True
                else:
                    self.point = self._after_body
                break
            elif state == _PLAINTEXT:
                pos = end
            else:  # the three script states
                pattern, prefixes = _SCRIPT_PATTERNS[state]
                match = pattern.search(data, pos)
                if match is None:
                    pos = _cut_at(data, pos, prefixes)
                    break
                state, pos = _script_step(state, match)
        self.examined += pos - start
        self._state = state
        return pos

    def _markup(self, data: bytes, lt: int, base: int) -> tuple[int, int] | None:
        """What the ``<`` at ``lt`` opens: the next state and where it goes on from.

        None when the bytes end before that is clear. Sets :attr:`point` at ``</head`` and
        :attr:`marked` at the snippet's own ``<script`` tag.
        """
        end = len(data)
        if lt + 1 >= end:
            return None
        byte = data[lt + 1]
        if byte == 0x21:  # <!
            if data.startswith(b"--", lt + 2):
                return _COMMENT_START, lt + 4
            if end - lt < 4 and b"--".startswith(data[lt + 2 :]):
                return None
            return _BOGUS_COMMENT, lt + 2  # a doctype or CDATA ends at ``>`` too
        if byte == 0x3F:  # <?
            return _BOGUS_COMMENT, lt + 1
        closing = byte == 0x2F  # </
        name_at = lt + 2 if closing else lt + 1
        if name_at >= end:
            return None
        if not 0x61 <= data[name_at] | 0x20 <= 0x7A:  # not a letter
            if not closing:
                return _DATA, lt + 1  # a ``<`` in text
            if data[name_at] == 0x3E:
                return _DATA, name_at + 1  # ``</>`` is dropped
            return _BOGUS_COMMENT, name_at
        name_end = _NAME_CHARS.match(data, name_at).end()  # type: ignore[union-attr]
        if name_end - name_at > _LONGEST_NAME:
            return _TAG_NAME, name_end
        if name_end == end:
            return None
        name = data[name_at:name_end].lower()
        if closing:
            if name == b"head":
                self.point = base + lt
            return _BEFORE_ATTR, name_end
        if name == b"script":
            if end - lt <= len(MARKER) and MARKER.startswith(data[lt:]):
                return None
            if data.startswith(MARKER, lt) and data[lt + len(MARKER)] in _ATTR_NAME_END:
                self.marked = True
                return _DATA, lt
        if name == b"body" or name == b"script" or name == b"plaintext" or name in _TEXT_ELEMENTS:
            self._opened = name
            match = _ATTRIBUTES.match(data, name_end)
            if match is not None:
                return self._tag_end(match.end(), base)
        return _BEFORE_ATTR, name_end

    def _tag_end(self, pos: int, base: int) -> tuple[int, int]:
        """The state after the ``>`` of a tag, ``pos`` just past it."""
        opened, self._opened = self._opened, b""
        if not opened:
            return _DATA, pos
        if opened == b"body":
            self._after_body = base + pos
            return _AFTER_BODY, pos
        if opened == b"script":
            return _SCRIPT, pos
        if opened == b"plaintext":
            return _PLAINTEXT, pos
        self._text_end = _TEXT_END[opened]
        return _TEXT, pos


def _comment_step(state: int, byte: int) -> int:
    """The comment state after ``byte``: -1 to read it again as comment text."""
    if byte == 0x2D:  # -
        if state == _COMMENT_START:
            return _COMMENT_START_DASH
        return _COMMENT_END_DASH if state == _COMMENT_END_BANG else _COMMENT_END
    if byte == 0x3E:  # > ends it, except right after a single dash
        return -1 if state == _COMMENT_END_DASH else _DATA
    if byte == 0x21 and state == _COMMENT_END:  # !
        return _COMMENT_END_BANG
    return -1


def _script_step(state: int, match: re.Match[bytes]) -> tuple[int, int]:
    """The script state after ``match`` of its pattern, and where it goes on from."""
    found = match.group()
    if found == b"<!--":
        # Read the dashes again: ``<!-->`` and ``<!--->`` leave the escape at once.
        return _SCRIPT_ESCAPED, match.start() + 2
    if found == b"-->":
        return _SCRIPT, match.end()
    if found[1] != 0x2F:  # ``<script`` in an escaped script
        return _SCRIPT_DOUBLE_ESCAPED, match.end()
    if state == _SCRIPT_DOUBLE_ESCAPED:
        return _SCRIPT_ESCAPED, match.end()
    return _BEFORE_ATTR, match.end()  # the real ``</script``: its attributes, then ``>``

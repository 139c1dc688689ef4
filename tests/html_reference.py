"""A slow, character-by-character reference for where the snippet goes in a whole page.

It follows the HTML tokenizer's states one by one (data, tags and attributes, comments with
every odd ending, RCDATA, RAWTEXT, script data with its escaped and double-escaped states,
PLAINTEXT), the way the specification writes them, so the streaming scanner in
``pixelmirror.inject`` has something independent to agree with. Tokens themselves are not
built: only the offsets that decide the insertion point and whether the page carries the
snippet's marked ``<script`` before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pixelmirror.snippet import MARKER

WHITESPACE = "\t\n\f\r "
RCDATA = {"title", "textarea"}
RAWTEXT = {"style", "xmp", "iframe", "noembed", "noframes", "noscript"}
MARKER_TEXT = MARKER.decode("ascii")


@dataclass
class Verdict:
    point: int | None
    marked: bool


def is_alpha(char: str) -> bool:
    return "a" <= char <= "z" or "A" <= char <= "Z"


def lower(text: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


def reference(page: bytes) -> Verdict:
    text = page.decode("latin-1")
    n = len(text)
    state = "data"
    i = 0
    tag_start = 0
    tag_name = ""
    closing = False
    raw = ""  # the element whose content is text
    buffer = ""  # the temporary buffer of the script states
    while i < n:
        c = text[i]
        i += 1
        if state == "data":
            if c == "<":
                state, tag_start = "tag open", i - 1
        elif state == "tag open":
            if c == "!":
                state = "markup declaration open"
            elif c == "/":
                state = "end tag open"
            elif is_alpha(c):
                state, tag_name, closing = "tag name", lower(c), False
            elif c == "?":
                state = "bogus comment"
            else:
                state, i = "data", i - 1
        elif state == "end tag open":
            if is_alpha(c):
                state, tag_name, closing = "tag name", lower(c), True
            elif c == ">":
                state = "data"
            else:
                state, i = "bogus comment", i - 1
        elif state == "tag name":
            if c in WHITESPACE or c in "/>":
                if closing and tag_name == "head":
                    return Verdict(tag_start, False)
                if (
                    not closing
                    and tag_name == "script"
                    and text.startswith(MARKER_TEXT, tag_start)
                    and text[tag_start + len(MARKER_TEXT) : tag_start + len(MARKER_TEXT) + 1]
                    in tuple("=/>" + WHITESPACE)
                ):
                    return Verdict(None, True)
                state, i = "before attribute name", i - 1
            else:
                tag_name += lower(c)
        elif state == "before attribute name":
            if c in WHITESPACE:
                pass
            elif c in "/>":
                state, i = "after attribute name", i - 1
            else:
                state = "attribute name"  # ``=`` too starts a name here
        elif state == "attribute name":
            if c in WHITESPACE or c in "/>":
                state, i = "after attribute name", i - 1
            elif c == "=":
                state = "before attribute value"
        elif state == "after attribute name":
            if c in WHITESPACE:
                pass
            elif c == "/":
                state = "self-closing start tag"
            elif c == "=":
                state = "before attribute value"
            elif c == ">":
                state = emit_tag(closing, tag_name)
                if state == "found":
                    return after_body(text, i)
            else:
                state, i = "attribute name", i - 1
        elif state == "before attribute value":
            if c in WHITESPACE:
                pass
            elif c == '"':
                state = "attribute value (double-quoted)"
            elif c == "'":
                state = "attribute value (single-quoted)"
            elif c == ">":
                state = emit_tag(closing, tag_name)
                if state == "found":
                    return after_body(text, i)
            else:
                state, i = "attribute value (unquoted)", i - 1
        elif state == "attribute value (double-quoted)":
            if c == '"':
                state = "after attribute value (quoted)"
        elif state == "attribute value (single-quoted)":
            if c == "'":
                state = "after attribute value (quoted)"
        elif state == "attribute value (unquoted)":
            if c in WHITESPACE:
                state = "before attribute name"
            elif c == ">":
                state = emit_tag(closing, tag_name)
                if state == "found":
                    return after_body(text, i)
        elif state == "after attribute value (quoted)":
            if c in WHITESPACE:
                state = "before attribute name"
            elif c == "/":
                state = "self-closing start tag"
            elif c == ">":
                state = emit_tag(closing, tag_name)
                if state == "found":
                    return after_body(text, i)
            else:
                state, i = "before attribute name", i - 1
        elif state == "self-closing start tag":
            if c == ">":
                state = emit_tag(closing, tag_name)
                if state == "found":
                    return after_body(text, i)
            else:
                state, i = "before attribute name", i - 1
        elif state == "bogus comment":
            if c == ">":
                state = "data"
        elif state == "markup declaration open":
            if text.startswith("-", i - 1) and text.startswith("-", i):
                state, i = "comment start", i + 1
            elif lower(text[i - 1 : i + 6]) == "doctype":
                state = "doctype"
            else:
                state, i = "bogus comment", i - 1
        elif state == "doctype":
            if c == ">":  # every DOCTYPE state ends the token at ``>``
                state = "data"
        elif state == "comment start":
            if c == "-":
                state = "comment start dash"
            elif c == ">":
                state = "data"
            else:
                state, i = "comment", i - 1
        elif state == "comment start dash":
            if c == "-":
                state = "comment end"
            elif c == ">":
                state = "data"
            else:
                state, i = "comment", i - 1
        elif state == "comment":
            if c == "<":
                state = "comment less-than sign"
            elif c == "-":
                state = "comment end dash"
        elif state == "comment less-than sign":
            if c == "!":
                state = "comment less-than sign bang"
            elif c != "<":
                state, i = "comment", i - 1
        elif state == "comment less-than sign bang":
            if c == "-":
                state = "comment less-than sign bang dash"
            else:
                state, i = "comment", i - 1
        elif state == "comment less-than sign bang dash":
            if c == "-":
                state = "comment less-than sign bang dash dash"
            else:
                state, i = "comment end dash", i - 1
        elif state == "comment less-than sign bang dash dash":
            state, i = "comment end", i - 1
        elif state == "comment end dash":
            if c == "-":
                state = "comment end"
            else:
                state, i = "comment", i - 1
        elif state == "comment end":
            if c == ">":
                state = "data"
            elif c == "!":
                state = "comment end bang"
            elif c != "-":
                state, i = "comment", i - 1
        elif state == "comment end bang":
            if c == "-":
                state = "comment end dash"
            elif c == ">":
                state = "data"
            else:
                state, i = "comment", i - 1
        elif state == "text":  # RCDATA and RAWTEXT read alike here
            if c == "<":
                state = "text less-than sign"
        elif state == "text less-than sign":
            if c == "/":
                state, buffer = "text end tag open", ""
            else:
                state, i = "text", i - 1
        elif state == "text end tag open":
            if is_alpha(c):
                state, i = "text end tag name", i - 1
            else:
                state, i = "text", i - 1
        elif state == "text end tag name":
            if is_alpha(c):
                buffer += lower(c)
            elif (c in WHITESPACE or c in "/>") and buffer == raw:
                state, i, tag_name, closing = "before attribute name", i - 1, raw, True
            else:
                state, i = "text", i - 1
        elif state == "plaintext":
            return Verdict(None, False)
        elif state.startswith("script"):
            state, i, buffer = script_step(state, c, i, buffer)
            if state == "script end tag":
                state, tag_name, closing = "before attribute name", "script", True
        else:
            raise AssertionError(state)
        if state.startswith("opened "):
            raw = state.removeprefix("opened ")
            state = {"script": "script data", "plaintext": "plaintext"}.get(raw, "text")
    return Verdict(None, False)


def after_body(text: str, i: int) -> Verdict:
    """Just after ``<body ...>``: the point, unless the snippet's marked script is there."""
    follows = text[i + len(MARKER_TEXT) : i + len(MARKER_TEXT) + 1]
    if text.startswith(MARKER_TEXT, i) and follows and follows in "=/>" + WHITESPACE:
        return Verdict(None, True)
    return Verdict(i, False)


def emit_tag(closing: bool, name: str) -> str:
    """The state after a tag's ``>``: what the tree builder tells the tokenizer."""
    if closing:
        return "data"
    if name == "body":
        return "found"
    if name in RCDATA or name in RAWTEXT or name in ("script", "plaintext"):
        return "opened " + name
    return "data"


def script_step(state: str, c: str, i: int, buffer: str) -> tuple[str, int, str]:
    """One character in the script data states; ``i`` already points past ``c``."""
    again = i - 1
    if state == "script data":
        if c == "<":
            return "script data less-than sign", i, buffer
        return state, i, buffer
    if state == "script data less-than sign":
        if c == "/":
            return "script data end tag open", i, ""
        if c == "!":
            return "script data escape start", i, buffer
        return "script data", again, buffer
    if state in ("script data end tag open", "script data escaped end tag open"):
        back = "script data" if state == "script data end tag open" else "script data escaped"
        if is_alpha(c):
            return back + " end tag name", again, ""
        return back, again, buffer
    if state in ("script data end tag name", "script data escaped end tag name"):
        back = "script data" if state == "script data end tag name" else "script data escaped"
        if is_alpha(c):
            return state, i, buffer + lower(c)
        if (c in WHITESPACE or c in "/>") and buffer == "script":
            return "script end tag", again, buffer
        return back, again, buffer
    if state == "script data escape start":
        if c == "-":
            return "script data escape start dash", i, buffer
        return "script data", again, buffer
    if state == "script data escape start dash":
        if c == "-":
            return "script data escaped dash dash", i, buffer
        return "script data", again, buffer
    if state == "script data escaped":
        if c == "-":
            return "script data escaped dash", i, buffer
        if c == "<":
            return "script data escaped less-than sign", i, buffer
        return state, i, buffer
    if state == "script data escaped dash":
        if c == "-":
            return "script data escaped dash dash", i, buffer
        if c == "<":
            return "script data escaped less-than sign", i, buffer
        return "script data escaped", i, buffer
    if state == "script data escaped dash dash":
        if c == "-":
            return state, i, buffer
        if c == "<":
            return "script data escaped less-than sign", i, buffer
        if c == ">":
            return "script data", i, buffer
        return "script data escaped", i, buffer
    if state == "script data escaped less-than sign":
        if c == "/":
            return "script data escaped end tag open", i, ""
        if is_alpha(c):
            return "script data double escape start", again, ""
        return "script data escaped", again, buffer
    if state in ("script data double escape start", "script data double escape end"):
        to, other = (
            ("script data double escaped", "script data escaped")
            if state == "script data double escape start"
            else ("script data escaped", "script data double escaped")
        )
        if c in WHITESPACE or c in "/>":
            return (to if buffer == "script" else other), i, buffer
        if is_alpha(c):
            return state, i, buffer + lower(c)
        return other, again, buffer
    if state == "script data double escaped":
        if c == "-":
            return "script data double escaped dash", i, buffer
        if c == "<":
            return "script data double escaped less-than sign", i, buffer
        return state, i, buffer
    if state == "script data double escaped dash":
        if c == "-":
            return "script data double escaped dash dash", i, buffer
        if c == "<":
            return "script data double escaped less-than sign", i, buffer
        return "script data double escaped", i, buffer
    if state == "script data double escaped dash dash":
        if c == "-":
            return state, i, buffer
        if c == "<":
            return "script data double escaped less-than sign", i, buffer
        if c == ">":
            return "script data", i, buffer
        return "script data double escaped", i, buffer
    if state == "script data double escaped less-than sign":
        if c == "/":
            return "script data double escape end", i, ""
        return "script data double escaped", again, buffer
    raise AssertionError(state)

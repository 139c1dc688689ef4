"""Tests for pixelmirror.inject and HeldPage: eligibility, insertion point, header rewriting."""

from __future__ import annotations

import itertools
import random
import re
import tracemalloc
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from html_reference import Verdict, reference
from pixelmirror import inject as inject_module
from pixelmirror.events import BrowserEvent
from pixelmirror.inject import _LOOKAHEAD, InsertionScanner
from pixelmirror.snippet import MARKER, render_snippet
from pixelmirror.web import headers as headers_module
from pixelmirror.web.headers import (
    csp_nonce,
    page_policies,
    rewrite_headers,
    should_inject,
)
from pixelmirror.web.response import HeldPage, Plan

HTML = ("Content-Type", "text/html; charset=utf-8")

# --------------------------------------------------------------------------------------------
# should_inject


@pytest.mark.parametrize(
    ("method", "status", "headers", "expected"),
    [
        # content types
        pytest.param("GET", 200, [HTML], True, id="html-charset"),
        pytest.param("GET", 200, [("Content-Type", "text/html")], True, id="html-bare"),
        pytest.param(
            "GET", 200, [("content-type", "TEXT/HTML; Charset=UTF-8")], True, id="html-case"
        ),
        pytest.param("GET", 200, [("Content-Type", " text/html ;q=1")], True, id="html-spaces"),
        pytest.param("GET", 200, [("Content-Type", "application/xhtml+xml")], True, id="xhtml"),
        pytest.param("GET", 200, [("Content-Type", "application/json")], False, id="json"),
        pytest.param("GET", 200, [("Content-Type", "text/plain")], False, id="text-plain"),
        pytest.param("GET", 200, [("Content-Type", "text/htmlx")], False, id="html-lookalike"),
        pytest.param("GET", 200, [("Content-Type", "text/event-stream")], False, id="sse"),
        pytest.param("GET", 200, [], False, id="no-content-type"),
        pytest.param("GET", 200, [HTML, ("Content-Type", "text/plain")], False, id="two-types"),
        # encodings
        pytest.param("GET", 200, [HTML, ("Content-Encoding", "gzip")], False, id="gzip"),
        pytest.param("GET", 200, [HTML, ("content-encoding", "BR")], False, id="br"),
        pytest.param("GET", 200, [HTML, ("Content-Encoding", "identity")], True, id="identity"),
        pytest.param("GET", 200, [HTML, ("Content-Encoding", "")], True, id="empty-encoding"),
        pytest.param(
            "GET", 200, [HTML, ("Content-Encoding", "identity, gzip")], False, id="identity-gzip"
        ),
        # methods
        pytest.param("HEAD", 200, [HTML], False, id="head"),
        pytest.param("head", 200, [HTML], False, id="head-lowercase"),
        pytest.param("POST", 200, [HTML], True, id="post"),
        # statuses
        pytest.param("GET", 100, [HTML], False, id="100"),
        pytest.param("GET", 201, [HTML], True, id="201"),
        pytest.param("GET", 204, [HTML], False, id="204"),
        pytest.param("GET", 205, [HTML], False, id="205"),
        pytest.param("GET", 206, [HTML], False, id="206"),
        pytest.param("GET", 301, [HTML], False, id="301"),
        pytest.param("GET", 302, [HTML], False, id="302"),
        pytest.param("GET", 304, [HTML], False, id="304"),
        pytest.param("GET", 404, [HTML], True, id="404"),
        pytest.param("GET", 500, [HTML], True, id="500"),
        pytest.param("GET", 600, [HTML], False, id="600"),
        pytest.param("GET", 0, [HTML], False, id="0"),
        # downloads and partial bodies
        pytest.param(
            "GET",
            200,
            [HTML, ("Content-Disposition", 'attachment; filename="a.html"')],
            False,
            id="attachment",
        ),
        pytest.param(
            "GET", 200, [HTML, ("content-disposition", "ATTACHMENT")], False, id="attachment-case"
        ),
        pytest.param("GET", 200, [HTML, ("Content-Disposition", "inline")], True, id="inline"),
        pytest.param(
            "GET", 200, [HTML, ("Content-Range", "bytes 0-9/100")], False, id="content-range"
        ),
        # odd input
        pytest.param("GET", "200", [HTML], False, id="status-str"),
        pytest.param("GET", True, [HTML], False, id="status-bool"),
        pytest.param(None, 200, [HTML], False, id="method-none"),
        pytest.param("GET", 200, [("Content-Type", None)], False, id="value-none"),
        pytest.param("GET", 200, [("Content-Type",)], False, id="short-tuple"),
        pytest.param("GET", 200, None, False, id="headers-none"),
    ],
)
def test_should_inject(method: object, status: object, headers: object, expected: bool) -> None:
    assert should_inject(method, status, headers) is expected  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# InsertionScanner: where the snippet goes


def cut(body: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``body`` in pieces, cut at each offset of ``cuts``."""
    edges = [0, *sorted(cuts), len(body)]
    return [body[start:end] for start, end in itertools.pairwise(edges)]


def scan(body: bytes, cuts: Iterable[int] = ()) -> InsertionScanner:
    scanner = InsertionScanner()
    for piece in cut(body, cuts):
        scanner.feed(piece)
    scanner.end()
    return scanner


def point_of(body: bytes) -> int | None:
    return scan(body).point


@pytest.mark.parametrize(
    ("body", "marker"),
    [
        pytest.param(b"<html><head><title>t</title></head><body>x</body>", b"</head>", id="head"),
        pytest.param(b"<HTML><HEAD></HEAD ><BODY>", b"</HEAD >", id="upper-space"),
        pytest.param(b"<head>\n</head\n>", b"</head\n>", id="newline"),
        pytest.param(b"<head></hEaD>", b"</hEaD>", id="mixed-case"),
        pytest.param(b"<head><header></header></head>", b"</head>", id="not-header"),
        pytest.param(
            b"<head></head><body></body><!-- </head> -->", b"</head>", id="first-head-wins"
        ),
    ],
)
def test_insertion_before_head_close(body: bytes, marker: bytes) -> None:
    assert point_of(body) == body.index(marker)


@pytest.mark.parametrize(
    ("body", "tag"),
    [
        pytest.param(b"<html><body>hi", b"<body>", id="bare-body"),
        pytest.param(b"<p><BODY CLASS=x>hi", b"<BODY CLASS=x>", id="upper-attrs"),
        pytest.param(
            b'<body class="a b" data-x="1>2">hi', b'<body class="a b" data-x="1>2">', id="quoted-gt"
        ),
        pytest.param(
            b"<body\n  onload='f(\">\")'>", b"<body\n  onload='f(\">\")'>", id="single-quoted"
        ),
        pytest.param(b"<bodyguard><body/>", b"<body/>", id="after-bodyguard"),
        pytest.param(b"<body></head>", b"<body>", id="body-before-a-stray-head-close"),
    ],
)
def test_insertion_after_body_open(body: bytes, tag: bytes) -> None:
    assert point_of(body) == body.index(tag) + len(tag)


# ``^`` marks where the snippet goes; every ``</head>`` or ``<body>`` before it is text.
HIDDEN = [
    pytest.param(b'<head><script>document.write("</head>")</script>^</head>', id="script-string"),
    pytest.param(b'<script>x="</scr"+"ipt></head>"</script>^</head>', id="script-cut-end-tag"),
    pytest.param(b'<script>x="</scripts></head>"</script >^</head>', id="script-longer-name"),
    pytest.param(b"<SCRIPT type=module>x='</head>'</sCrIpT\n>^</head>", id="script-case"),
    pytest.param(b'<script>x="<body>"</script><body>^<p>', id="body-in-script"),
    pytest.param(b"<script><!--<script></script></head>--></script>^</head>", id="script-double"),
    pytest.param(
        b"<script><!--<script></script><script></script></head>--></script>^</head>",
        id="script-double-twice",
    ),
    pytest.param(b"<script><!--</script>^</head>", id="script-escaped-end"),
    pytest.param(b"<script><!--></script>^</head>", id="script-escape-at-once"),
    pytest.param(b"<!-- </head> <body> -->^</head>", id="comment"),
    pytest.param(b"<!-->^</head>", id="comment-empty"),
    pytest.param(b"<!--->^</head>", id="comment-dash"),
    pytest.param(b"<!-- a --!>^</head>", id="comment-bang-end"),
    pytest.param(b"<!-- a --!-></head> -->^</head>", id="comment-bang-dash"),
    pytest.param(b"<!--!></head>-->^</head>", id="comment-bang-start"),
    pytest.param(b"<!-- <!-- </head> -->^</head>", id="comment-nested-open"),
    pytest.param(b"<!-- a -> </head> -->^</head>", id="comment-single-dash"),
    pytest.param(b"<!DOCTYPE html><? </head ?>^</head>", id="processing-instruction"),
    pytest.param(b"<![CDATA[ </head ]]>^</head>", id="cdata"),
    pytest.param(b"</ </head>^</head>", id="end-tag-non-letter"),
    pytest.param(b"</3 x></>^</head>", id="end-tag-digit"),
    pytest.param(b"<title></head></title>^</head>", id="title"),
    pytest.param(b"<TITLE></HEAD></TiTlE >^</head>", id="title-case"),
    pytest.param(b"<title></titlex></head></title/>^</head>", id="title-longer-name"),
    pytest.param(b'<style>a:after{content:"</head>"}</style>^</head>', id="style"),
    pytest.param(b"<textarea></head><body></textarea>^</head>", id="textarea"),
    pytest.param(b"<xmp></head></xmp>^</head>", id="xmp"),
    pytest.param(b"<iframe></head></iframe>^</head>", id="iframe"),
    pytest.param(b"<noembed></head></noembed>^</head>", id="noembed"),
    pytest.param(b"<noframes></head></noframes>^</head>", id="noframes"),
    pytest.param(b"<noscript><body></noscript>^</head>", id="noscript"),
    pytest.param(b'<meta content="a>b</head>">^</head>', id="attr-double-quoted"),
    pytest.param(b"<meta content='</head>' x>^</head>", id="attr-single-quoted"),
    pytest.param(b'<meta a = "</head>"/>^</head>', id="attr-spaced"),
    pytest.param(b'<a =">^</head>">', id="quote-in-name"),
    pytest.param(b'<a b=c"d>^</head>">', id="quote-in-unquoted"),
    pytest.param(b'<a b="x"=">"^</head>', id="equals-after-quoted-value"),
    pytest.param(b'</x a="</head>">^</head>', id="end-tag-attributes"),
    pytest.param(b"<a<body>^</head>", id="lt-in-tag-name"),
    pytest.param(b"a < b <3 ^</head>", id="lt-in-text"),
    pytest.param(b"<html><body class=x>^<p></head>", id="body-first"),
]


def unmark(marked: bytes) -> tuple[bytes, int]:
    return marked.replace(b"^", b""), marked.index(b"^")


@pytest.mark.parametrize("marked", HIDDEN)
def test_head_and_body_inside_text_or_comments_do_not_count(marked: bytes) -> None:
    body, expected = unmark(marked)
    assert reference(body) == Verdict(expected, False)  # the reference agrees on the example
    assert point_of(body) == expected


@pytest.mark.parametrize("marked", HIDDEN)
def test_the_point_is_the_same_wherever_the_page_is_cut(marked: bytes) -> None:
    body, expected = unmark(marked)
    for at in range(len(body) + 1):
        assert scan(body, [at]).point == expected, at
    assert scan(body, range(len(body))).point == expected  # one byte at a time


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"<html><head><title>t</title>", id="head-not-closed-yet"),
        pytest.param(b"<html><head></head", id="head-close-cut"),
        pytest.param(b"<header></header><p>", id="header-only"),
        pytest.param(b"<bodyguard>hi</bodyguard>", id="bodyguard"),
        pytest.param(b"<body", id="body-cut"),
        pytest.param(b'<body class="x', id="body-cut-in-quote"),
        pytest.param(b'<body class="x>y', id="gt-inside-open-quote"),
        pytest.param(b"plain text, no markup", id="neither"),
        pytest.param(b"<!-- </head> <body>", id="open-comment"),
        pytest.param(b"<script></head>", id="open-script"),
        pytest.param(b"<title></head><body>", id="open-title"),
        pytest.param(b"<plaintext></plaintext></head><body>", id="plaintext"),
    ],
)
def test_no_insertion_point(body: bytes) -> None:
    assert point_of(body) is None


def test_after_plaintext_nothing_can_follow() -> None:
    scanner = scan(b"<head><plaintext>")
    assert scanner.done
    assert scanner.point is None


# --------------------------------------------------------------------------------------------
# the snippet's own mark

SNIPPET = render_snippet(
    pixel_ids=["123"], external_id=None, events=[BrowserEvent("PageView", "e1")]
)


def test_snippet_starts_with_the_marker() -> None:
    assert SNIPPET.startswith(MARKER)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<head>" + SNIPPET + b"</head>", id="in-head"),
        pytest.param(b"<body>" + SNIPPET, id="after-body"),
        pytest.param(b'<head><script data-pixelmirror nonce="n"></script></head>', id="nonce"),
    ],
)
def test_a_page_carrying_the_snippet_is_already_injected(body: bytes) -> None:
    for at in range(len(body) + 1):  # the mark cut anywhere
        scanner = scan(body, [at])
        assert scanner.marked, at
        assert scanner.point is None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<head></head><body>" + SNIPPET, id="after-the-point"),
        pytest.param(b"<head><!-- " + SNIPPET + b" --></head>", id="in-a-comment"),
        pytest.param(b"<head><script>x='" + MARKER + b"'</script></head>", id="in-a-script"),
        pytest.param(b"<head><title>" + MARKER + b"</title></head>", id="in-a-title"),
        pytest.param(b"<p>&lt;script data-pixelmirror&gt; docs</p><body>", id="escaped-mention"),
        pytest.param(b"<head><script data-pixelmirrors></script></head>", id="longer-name"),
    ],
)
def test_a_mark_that_is_not_a_real_tag_before_the_point_does_not_count(body: bytes) -> None:
    for at in range(len(body) + 1):
        scanner = scan(body, [at])
        assert not scanner.marked, at
        assert scanner.point is not None


# --------------------------------------------------------------------------------------------
# property: any page made of the awkward pieces, cut anywhere

PIECES = [
    b"<!DOCTYPE html>", b"<!doctype html>", b"<html>", b"<HEAD>", b"<head>", b"</head>",
    b"</HEAD >", b"</head\n>", b"</header>", b"<body>", b"<BODY class=x>", b'<body a=">">',
    b"<bodyx>", b"<!-- x -->", b"<!-->", b"<!--->", b"<!---->", b"<!-- --!>", b"<!--!>",
    b"<!-- -- -->", b"<!-", b"<!--", b"-->", b"--!>", b"<!x>", b"<?php ?>", b"</ x>", b"</3>",
    b"</>", b"<", b">", b"=", b'"', b"'", b"-", b"!", b"/", b" ", b"\n", b"text", b"<p>",
    b'<meta content="a>b">', b"<meta content='>'>", b"<a href=x>", b'<a =">">', b"<a b=c'd>",
    b"<script>", b"<SCRIPT type=module>", b"</script>", b"</SCRIPT >", b"</scr", b"ipt>",
    b"</scripts>", b"<script/>", b"<style>", b"</style>", b"<title>", b"</title>",
    b"<textarea>", b"</textarea>", b"<noscript>", b"</noscript>", b"<xmp>", b"</xmp>",
    b"<iframe>", b"</iframe>", b"<noembed>", b"</noembed>", b"<noframes>", b"</noframes>",
    b"<plaintext>", MARKER, MARKER + b'="">', b"<script data-pixelmirror>",
    b"<script data-pixelmirrorx>", b'"' + MARKER + b'"', b"<scriptx>", b"<titlex>",
    # names of every first letter, which the scanner sorts tags by
    b"<Link rel=x>", b'<div a="b">', b"</div>", b"</Meta >", b"<i>", b"</i>", b"<nav/>",
    b"<Span x='>'>", b"</h1>", b"<xmpx a>", b"</TD>", b"</body>", b"<Iframes>",
    # plain head tags, which a page's first bytes are stepped over by, and near misses
    b'<meta charset="utf-8">', b'<link rel="x" href="/a.css"/>', b'<meta c="</head>">',
    b"<base href=x>", b'<html lang="en" >', b"<title>x</title>", b'<meta a="b"c>',
    b"<meta\n>", b"<headx>", b"<meta a b=\"\">", b"<link a/>", b"<link a/b>", b"<title>a",
]  # fmt: skip

# What tends to confuse a scanner inside a comment, a script or another text element.
INNER = [
    b"</head>", b"<body>", b"<!--", b"-->", b"<!-->", b"--!>", b"-", b"!", b">", b"<",
    b"<script>", b"</script>", b"<script ", b"</script ", b"</scr", b"</title>", b"</style>",
    b"</textarea >", b"</noscript/", b"x", MARKER,
]  # fmt: skip
# Openers with the bytes that usually close them (the closer is sometimes left out).
OPENERS = {
    b"<script>": b"</script>", b"<script><!--": b"--></script>", b"<style>": b"</style>",
    b"<title>": b"</title>", b"<textarea>": b"</textarea>", b"<noscript>": b"</noscript>",
    b"<xmp>": b"</xmp>", b"<iframe>": b"</iframe>", b"<!--": b"-->", b"<?": b">",
    b"<!": b">", b"</ ": b">", b'<a href="': b'">', b"<a b='": b"'>",
}  # fmt: skip
SOUP = [
    b"<!--", b"-->", b"--!>", b"-", b"!", b">", b"<", b"<script>", b"</script>", b"</head>",
    b"<body>",
]  # fmt: skip


@st.composite
def containers(draw: st.DrawFn) -> bytes:
    """Something that reads as text or comment, holding what a scanner could take for tags."""
    opener = draw(st.sampled_from(sorted(OPENERS)))
    # Dense mixes of the few bytes that move the comment and script states around, or a
    # looser mix of every kind of end tag.
    inner = draw(st.lists(st.sampled_from(SOUP if draw(st.booleans()) else INNER), max_size=12))
    closer = draw(st.sampled_from([OPENERS[opener]] * 4 + [b"", *PIECES]))
    return b"".join((opener, *inner, closer))


blocks = st.one_of(st.sampled_from(PIECES), containers())
pages = st.one_of(
    st.tuples(
        st.lists(blocks, max_size=12),
        st.sampled_from([b"</head>", b"</HEAD\n>", b"<body>", b'<body a=">">', b""]),
        st.lists(blocks, max_size=4),
    ).map(lambda parts: b"".join((*parts[0], parts[1], *parts[2]))),
    st.lists(st.sampled_from(SOUP), max_size=24).map(b"".join),
)


@settings(max_examples=500, deadline=None)
@given(page=pages, data=st.data())
def test_the_scanner_agrees_with_the_reference_tokenizer_however_the_page_is_cut(
    page: bytes, data: st.DataObject
) -> None:
    expected = reference(page)
    for at in range(len(page) + 1):
        scanner = scan(page, [at])
        assert (scanner.point, scanner.marked) == (expected.point, expected.marked), at
    cuts = data.draw(st.sets(st.integers(0, len(page)), max_size=12))
    scanner = scan(page, cuts)
    assert (scanner.point, scanner.marked) == (expected.point, expected.marked), cuts


PLAIN_HEAD = [
    b"<!doctype html>", b"<html>", b'<html lang="en">', b"<head>", b'<meta charset="utf-8">',
    b'<meta name="viewport" content="a, b=1">', b"<title>Shop</title>", b"<base href=/>",
    b'<link rel="stylesheet" href="/a.css" />', b"<meta\tx>", b"\n", b"  ", b"text",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_the_plain_head_step_changes_no_answer(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's first bytes stepped over by _PLAIN_HEAD, or the general way, same answers."""
    rng = random.Random(seed)
    plain = inject_module._PLAIN_HEAD
    # Steps over nothing and finds no </head: the general way from the first byte.
    general = re.compile(rb"((?!))?")
    for _ in range(300):
        head = [rng.choice(PLAIN_HEAD) for _ in range(rng.randint(0, 8))]
        rest = [rng.choice(PIECES + PLAIN_HEAD) for _ in range(rng.randint(0, 6))]
        page = b"".join((*head, *rest, rng.choice([b"</head>", b"<body>", b""]), b"x"))
        cuts = {rng.randint(0, len(page)) for _ in range(rng.randint(0, 3))}
        answers = []
        for pattern in (plain, general):
            monkeypatch.setattr(inject_module, "_PLAIN_HEAD", pattern)
            scanner = scan(page, cuts)
            answers.append((scanner.point, scanner.marked, scanner.done))
        assert answers[0] == answers[1], (page, cuts)


@pytest.mark.parametrize("seed", range(4))
def test_a_page_held_in_one_chunk_is_spliced_as_one_held_in_many(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        page = b"".join(rng.choice(PIECES + PLAIN_HEAD) for _ in range(rng.randint(0, 12)))
        page += rng.choice([b"</head>", b"<body>", b""]) + b"tail"
        outs = []
        for pieces in ([page], cut(page, {rng.randint(0, len(page)) for _ in range(3)})):
            held = HeldPage(Plan(snippet=b"<S>"), [HTML], max_buffer=1 << 20)
            decided = None
            for index, piece in enumerate(pieces):
                decided = held.feed(piece, more=index < len(pieces) - 1)
                if decided is not None:
                    decided = (decided[0], decided[1] + b"".join(pieces[index + 1 :]))
                    break
            outs.append(decided)
        assert outs[0] == outs[1], page


@settings(max_examples=500, deadline=None)
@given(page=pages, data=st.data())
def test_a_held_page_gets_the_snippet_at_the_reference_point_and_nothing_else_changes(
    page: bytes, data: st.DataObject
) -> None:
    expected = reference(page)
    cuts = data.draw(st.sets(st.integers(0, len(page)), max_size=12))
    held = HeldPage(Plan(snippet=b"<S>"), [HTML], max_buffer=1 << 20)
    out = b""
    pieces = cut(page, cuts)
    for index, piece in enumerate(pieces):
        decided = held.feed(piece, more=index < len(pieces) - 1)
        if decided is not None:
            out = decided[1] + b"".join(pieces[index + 1 :])
            break
    if expected.point is None:
        assert out == page
        assert not held.injected
    else:
        assert out == page[: expected.point] + b"<S>" + page[expected.point :]
        assert held.injected


# --------------------------------------------------------------------------------------------
# linear work, bounded memory

PATHOLOGICAL = [
    pytest.param(b"<body ", id="body-open"),
    pytest.param(b"<!--", id="comment-open"),
    pytest.param(b"<script", id="script-open"),
    pytest.param(b"<body a='", id="body-quote"),
    pytest.param(b"<x a=", id="tag-equals"),
    pytest.param(b"<script><!--<script>", id="script-escapes"),
    pytest.param(b"<title></titl", id="title-end-cut"),
    pytest.param(b"<!-- --!", id="comment-bang"),
    pytest.param(b"<title>", id="title-open"),
    pytest.param(b"<script>x", id="script-content"),
    pytest.param(b"<style></st", id="style-end-cut"),
    pytest.param(b"<!DOCTYPE ", id="doctype-open"),
]


@pytest.mark.parametrize("piece", PATHOLOGICAL)
@pytest.mark.parametrize("chunk", [7, 4096, None], ids=["chunks-7", "chunks-4k", "one-chunk"])
def test_finding_the_point_is_linear_in_the_page_size(piece: bytes, chunk: int | None) -> None:
    body = piece * (200_000 // len(piece))
    cuts = range(chunk, len(body), chunk) if chunk else ()
    scanner = scan(body, cuts)
    # Each byte once, plus at most one cut construct carried into each next chunk.
    assert (
        scanner.examined <= len(body) + (len(body) // chunk + 1) * _LOOKAHEAD
        if chunk
        else len(body)
    )


def test_a_huge_single_chunk_is_spliced_without_copies() -> None:
    size = 20 * 1024 * 1024
    tracemalloc.start()
    try:
        body = b"<html><head><title>t</title></head>" + b"x" * size
        held = HeldPage(Plan(snippet=SNIPPET), [HTML], max_buffer=1024)
        decided = held.feed(body, more=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decided is not None
    assert decided[1].startswith(b"<html><head><title>t</title>" + SNIPPET + b"</head>xxx")
    # The page and its spliced copy, nothing more.
    assert peak <= 2.2 * size


def test_a_page_given_up_on_comes_back_without_a_copy() -> None:
    body = b"<p>no head, no body</p>"
    held = HeldPage(Plan(snippet=SNIPPET), [HTML], max_buffer=1024)
    decided = held.feed(body, more=False)
    assert decided is not None
    assert decided[1] is body


def test_a_held_page_already_carrying_the_snippet_goes_out_untouched() -> None:
    body = b"<head>" + SNIPPET + b"</head>"
    held = HeldPage(Plan(snippet=SNIPPET), [HTML], max_buffer=1024)
    assert held.feed(body[:10], more=True) is None
    decided = held.feed(body[10:], more=True)
    assert decided is not None
    assert b"".join(held.chunks) == decided[1] == body
    assert not held.injected


# --------------------------------------------------------------------------------------------
# rewrite_headers


def cache_control(headers: list[tuple[str, str]]) -> list[str]:
    return [value for name, value in headers if name.lower() == "cache-control"]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param([HTML, ("Content-Length", "100")], "107", id="grows"),
        pytest.param([HTML, ("content-length", " 100 ")], "107", id="spaces"),
    ],
)
def test_content_length_grows(before: list[tuple[str, str]], after: str) -> None:
    out = rewrite_headers(before, added_length=7)
    assert [v for n, v in out if n.lower() == "content-length"] == [after]


@pytest.mark.parametrize(
    "value", [pytest.param("abc", id="garbage"), pytest.param("-1", id="negative")]
)
def test_unreadable_content_length_is_dropped(value: str) -> None:
    out = rewrite_headers([HTML, ("Content-Length", value)], added_length=7)
    assert all(n.lower() != "content-length" for n, _ in out)


def test_absent_content_length_stays_absent() -> None:
    out = rewrite_headers([HTML], added_length=7)
    assert all(n.lower() != "content-length" for n, _ in out)


@pytest.mark.parametrize(
    ("etag", "kept"),
    [
        pytest.param('"abc"', False, id="strong"),
        pytest.param('W/"abc"', True, id="weak"),
        pytest.param(' W/"abc"', True, id="weak-leading-space"),
    ],
)
def test_etag(etag: str, kept: bool) -> None:
    # A weak ETag survives only on a page that is the same for everyone.
    shared = rewrite_headers([HTML, ("ETag", etag)], added_length=1, private=False)
    assert (("ETag", etag) in shared) is kept
    private = rewrite_headers([HTML, ("ETag", etag)], added_length=1)
    assert ("ETag", etag) not in private


def test_last_modified_goes_from_private_pages_only() -> None:
    headers = [HTML, ("Last-Modified", "Wed, 21 Oct 2026 07:28:00 GMT")]
    assert headers[1] not in rewrite_headers(headers, added_length=1)
    assert headers[1] in rewrite_headers(headers, added_length=1, private=False)


@pytest.mark.parametrize("name", ["Content-MD5", "Digest", "Content-Digest", "repr-digest"])
def test_body_digests_are_dropped(name: str) -> None:
    out = rewrite_headers([HTML, (name, "sha-256=:abc:"), ("X-A", "1")], added_length=1)
    assert all(n != name for n, _ in out)
    assert ("X-A", "1") in out


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param([], ["private, no-cache"], id="absent"),
        pytest.param(["public, max-age=600, s-maxage=60"], ["private, max-age=600"], id="public"),
        pytest.param(["max-age=600"], ["private, max-age=600"], id="max-age-only"),
        pytest.param(["PUBLIC, S-MAXAGE=60"], ["private"], id="upper-case"),
        pytest.param(["private"], ["private"], id="private"),
        pytest.param(["private, max-age=60"], ["private, max-age=60"], id="private-max-age"),
        pytest.param(["no-store"], ["no-store"], id="no-store"),
        pytest.param(["public, no-store"], ["public, no-store"], id="no-store-wins"),
        pytest.param(
            ['no-cache="Set-Cookie, X-A", public'],
            ['private, no-cache="Set-Cookie, X-A"'],
            id="quoted-comma",
        ),
        pytest.param(
            ['private="Set-Cookie", max-age=60'],
            ["private, max-age=60"],
            id="qualified-private-is-not-private",
        ),
        pytest.param(["public", "max-age=60"], ["private", "max-age=60"], id="two-headers"),
        pytest.param(["max-age=60", "public"], ["private, max-age=60"], id="second-emptied"),
        pytest.param(
            ["public, max-age=60", "private"], ["public, max-age=60", "private"], id="split-private"
        ),
        pytest.param([""], ["private"], id="empty"),
    ],
)
def test_cache_control(before: list[str], after: list[str]) -> None:
    headers = [HTML, *(("Cache-Control", value) for value in before)]
    assert cache_control(rewrite_headers(headers, added_length=1)) == after


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CDN-Cache-Control", "max-age=3600"),
        ("Surrogate-Control", "max-age=3600"),
        ("Cloudflare-CDN-Cache-Control", "max-age=3600"),
        ("Vercel-CDN-Cache-Control", "max-age=3600"),
        ("Edge-Control", "!no-store, max-age=3600"),
        ("X-Accel-Expires", "3600"),
        ("x-accel-expires", "@1800000000"),
    ],
)
def test_shared_cache_headers_that_outrank_cache_control_leave_private_pages(
    name: str, value: str
) -> None:
    headers = [HTML, (name, value), ("Cache-Control", "public, max-age=60")]
    private = rewrite_headers(headers, added_length=1)
    assert all(n != name for n, _ in private)
    assert cache_control(private) == ["private, max-age=60"]
    # A page that is the same for everyone keeps them.
    assert (name, value) in rewrite_headers(headers, added_length=1, private=False)


def test_rewrite_keeps_other_headers_and_order() -> None:
    headers = [
        ("X-First", "1"),
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", "10"),
        ("ETag", '"strong"'),
        ("Set-Cookie", "app=1; Path=/"),
        ("Cache-Control", "public, max-age=600, s-maxage=60"),
        ("Content-MD5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
        ("Vary", "Accept-Encoding"),
        ("X-Last", "  spaced  "),
    ]
    out = rewrite_headers(headers, added_length=5, set_cookies=["a=1; Path=/", "b=2; Path=/"])
    assert out == [
        ("X-First", "1"),
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", "15"),
        ("Set-Cookie", "app=1; Path=/"),
        ("Cache-Control", "private, max-age=600"),
        ("Vary", "Accept-Encoding"),
        ("X-Last", "  spaced  "),
        ("Set-Cookie", "a=1; Path=/"),
        ("Set-Cookie", "b=2; Path=/"),
    ]


def test_rewrite_does_not_mutate_its_input() -> None:
    headers = [HTML, ("Content-Length", "10")]
    rewrite_headers(headers, added_length=5, set_cookies=["a=1"])
    assert headers == [HTML, ("Content-Length", "10")]


_NAMES = (
    "Content-Type",
    "content-type",
    " Content-Type",
    "Content-Length",
    "content-length",
    "CONTENT-LENGTH",
    " content-length",
    "Content-Encoding",
    "content-disposition",
    "Content-Range",
    "Content-Security-Policy",
    "content-security-policy",
    " content-security-policy",
    "ETag",
    "etag",
    "Cache-Control",
    "cache-control",
    "Last-Modified",
    "Digest",
    "Surrogate-Control",
    "Set-Cookie",
    "Vary",
    "x-a",
    "X-B",
    "x-1",
    "",
)
_VALUES = (
    "text/html",
    "text/html; charset=utf-8",
    "TEXT/HTML",
    "application/json",
    "application/xhtml+xml",
    "100",
    " 12 ",
    "-3",
    "1_0",
    "abc",
    "",
    "gzip",
    "identity",
    "attachment; filename=x",
    "script-src 'nonce-abc123'",
    "default-src 'self'; script-src 'nonce-Zz+/='",
    "img-src 'nonce-no'",
    "public, max-age=60",
    "private",
    "no-store",
    'W/"x"',
    '"x"',
)


def _random_headers(rng: random.Random) -> list[tuple[str, str]]:
    return [(rng.choice(_NAMES), rng.choice(_VALUES)) for _ in range(rng.randint(0, 6))]


@pytest.mark.parametrize("seed", range(4))
def test_the_plain_rewrite_gives_the_general_headers(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(2000):
        headers = _random_headers(rng)
        if rng.random() < 0.5:  # the common page: nothing but a length to bump
            headers = [(n, v) for n, v in headers if n.strip().lower() in ("content-length", "x-a")]
        options = {
            "added_length": rng.choice([0, 1, 3000]),
            "set_cookies": rng.choice([(), ("a=1",), ("a=1", "b=2")]),
            "private": rng.random() < 0.8,
        }
        general = headers_module._rewrite(headers, **options)  # type: ignore[arg-type]
        assert rewrite_headers(headers, **options) == general, (headers, options)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(4))
def test_one_pass_answers_should_inject_and_the_nonce(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(2000):
        headers = _random_headers(rng)
        method = rng.choice(["GET", "HEAD", "post"])
        status = rng.choice([200, 204, 302, 404, 500])
        policies = page_policies(method, status, headers)
        injectable = should_inject(method, status, headers)
        assert (policies is not None) == injectable, headers
        if injectable:
            assert csp_nonce(policies or []) == csp_nonce(headers), headers


def test_rewrite_follows_lowercase_header_style() -> None:
    out = rewrite_headers([("content-type", "text/html")], added_length=1, set_cookies=["a=1"])
    assert out == [
        ("content-type", "text/html"),
        ("cache-control", "private, no-cache"),
        ("set-cookie", "a=1"),
    ]

"""Tests for pixelmirror.inject: eligibility, insertion point, splice and header rewriting."""

from __future__ import annotations

import time

import pytest

from pixelmirror.inject import (
    already_injected,
    find_insertion_point,
    rewrite_headers,
    should_inject,
    splice,
)
from pixelmirror.snippet import MARKER, BrowserEvent, render_snippet

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
# find_insertion_point


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
    assert find_insertion_point(body) == body.index(marker)


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
    ],
)
def test_insertion_after_body_open(body: bytes, tag: bytes) -> None:
    assert find_insertion_point(body) == body.index(tag) + len(tag)


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
    ],
)
def test_no_insertion_point(body: bytes) -> None:
    assert find_insertion_point(body) is None


def test_incomplete_body_tag_is_fast() -> None:
    body = b"<body " + b'a="' * 20_000 + b"x" * 200_000
    started = time.perf_counter()
    assert find_insertion_point(body) is None
    assert time.perf_counter() - started < 1.0


# --------------------------------------------------------------------------------------------
# splice and already_injected

SNIPPET = render_snippet(
    pixel_ids=["123"], external_id=None, events=[BrowserEvent("PageView", "e1")]
)


def test_splice_inserts_before_head_close() -> None:
    body = b"<html><head><title>t</title></head><body>x</body></html>"
    out = splice(body, SNIPPET)
    assert out == b"<html><head><title>t</title>" + SNIPPET + b"</head><body>x</body></html>"


def test_splice_inserts_after_body_open() -> None:
    out = splice(b"<body class=x><p>hi</p>", b"<S>")
    assert out == b"<body class=x><S><p>hi</p>"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"just text", id="no-point"),
        pytest.param(b"<body", id="incomplete"),
    ],
)
def test_splice_without_point_is_none(body: bytes) -> None:
    assert splice(body, SNIPPET) is None


def test_splice_refuses_a_second_injection() -> None:
    once = splice(b"<head></head>", SNIPPET)
    assert once is not None
    assert already_injected(once)
    assert splice(once, SNIPPET) is None
    assert once.count(MARKER) == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(SNIPPET, True, id="snippet"),
        pytest.param(b"<head>" + SNIPPET + b"</head>", True, id="in-page"),
        pytest.param(b'<script data-pixelmirror nonce="n">', True, id="with-nonce"),
        pytest.param(b"<head></head>", False, id="plain"),
        pytest.param(b"<p>&lt;script data-pixelmirror&gt; docs</p>", False, id="escaped-mention"),
    ],
)
def test_already_injected(body: bytes, expected: bool) -> None:
    assert already_injected(body) is expected


def test_snippet_starts_with_the_marker() -> None:
    assert SNIPPET.startswith(MARKER)


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


def test_rewrite_follows_lowercase_header_style() -> None:
    out = rewrite_headers([("content-type", "text/html")], added_length=1, set_cookies=["a=1"])
    assert out == [
        ("content-type", "text/html"),
        ("cache-control", "private, no-cache"),
        ("set-cookie", "a=1"),
    ]

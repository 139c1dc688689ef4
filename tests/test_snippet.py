"""Tests for pixelmirror.snippet: base code, init/track calls, noscript, nonce, safe JSON."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from xml.etree import ElementTree

import pytest

from pixelmirror import snippet
from pixelmirror.events import BrowserEvent
from pixelmirror.snippet import (
    DEFAULT_BEACON_PATH,
    MARKER,
    render_beacon_snippet,
    render_snippet,
)

PAGEVIEW = BrowserEvent("PageView", "ev-page")
XSS = "</script><script>alert(1)</script>"


def render(**overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "pixel_ids": ["111"],
        "external_id": None,
        "events": [PAGEVIEW],
    }
    kwargs.update(overrides)
    out = render_snippet(**kwargs)
    assert isinstance(out, bytes)
    return out.decode("ascii")  # ASCII or this raises


def script_body(html: str) -> str:
    match = re.fullmatch(
        r"<script data-pixelmirror[^>]*>(.*?)</script>(?:<noscript>.*</noscript>)?", html, re.DOTALL
    )
    assert match is not None, html
    return match.group(1)


def calls(html: str) -> list[str]:
    """The ``fbq(...)`` statements after the stub and the ``window.pixelmirror`` runtime."""
    return script_body(html).split("\n")[2:]


# --------------------------------------------------------------------------------------------
# structure


def test_stub_loads_fbevents_and_queues() -> None:
    stub = script_body(render()).split("\n")[0]
    assert "if(w.fbq)return;" in stub
    assert "https://connect.facebook.net/en_US/fbevents.js" in stub
    assert "s.async=true" in stub
    for piece in (
        "w.fbq=f",
        "w._fbq=f",
        "f.push=f",
        "f.loaded=true",
        "f.version='2.0'",
        "f.queue=[]",
    ):
        assert piece in stub
    assert stub.endswith("})(window,document);")


def test_stub_has_no_markup_characters() -> None:
    stub = script_body(render()).split("\n")[0]
    assert not set(stub) & set("<>&")


def test_markup_is_well_formed_xml_for_xhtml_pages() -> None:
    snippet = render_snippet(
        pixel_ids=["1", "2"],
        external_id="v&<",
        events=[PAGEVIEW, BrowserEvent("Purchase", "p", {"x": XSS, "y": "a&&b"})],
        nonce="n'\"<&",
        agent="a",
        ldu=True,
        auto_config=False,
    )
    page = (
        b'<html xmlns="http://www.w3.org/1999/xhtml"><head><title>t</title>'
        + snippet
        + b"</head><body/></html>"
    )
    root = ElementTree.fromstring(page)
    ns = "{http://www.w3.org/1999/xhtml}"
    script = root.find(f"{ns}head/{ns}script")
    assert script is not None
    assert script.get("data-pixelmirror") == ""
    assert script.get("nonce") == "n'\"<&"
    assert len(root.findall(f"{ns}head/{ns}noscript/{ns}img")) == 2


def test_minimal_page() -> None:
    assert calls(render()) == [
        'fbq("init","111");',
        'fbq("track","PageView",{},{"eventID":"ev-page"});',
    ]


def test_init_with_external_id_and_agent() -> None:
    assert calls(render(external_id="visitor-1", agent="pixelmirror"))[0] == (
        'fbq("init","111",{"external_id":"visitor-1"},{"agent":"pixelmirror"});'
    )


def test_init_with_external_id_only() -> None:
    assert calls(render(external_id="visitor-1"))[0] == (
        'fbq("init","111",{"external_id":"visitor-1"});'
    )


def test_init_with_agent_only_passes_empty_user_data() -> None:
    assert calls(render(agent="pm"))[0] == 'fbq("init","111",{},{"agent":"pm"});'


def test_ldu_and_autoconfig_come_before_init() -> None:
    lines = calls(render(pixel_ids=["111", "222"], ldu=True, auto_config=False, external_id="v"))
    assert lines[:5] == [
        'fbq("dataProcessingOptions",["LDU"],0,0);',
        'fbq("set","autoConfig",false,"111");',
        'fbq("init","111",{"external_id":"v"});',
        'fbq("set","autoConfig",false,"222");',
        'fbq("init","222",{"external_id":"v"});',
    ]


def test_defaults_have_no_ldu_nor_autoconfig() -> None:
    lines = calls(render())
    assert not any("dataProcessingOptions" in line for line in lines)
    assert not any("autoConfig" in line for line in lines)


def test_every_pixel_is_initialised_before_any_event() -> None:
    assert calls(render(pixel_ids=["1", "2", "3"])) == [
        'fbq("init","1");',
        'fbq("init","2");',
        'fbq("init","3");',
        'fbq("track","PageView",{},{"eventID":"ev-page"});',
    ]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(
            BrowserEvent("Purchase", "p1", {"value": 9.5, "currency": "USD"}),
            'fbq("track","Purchase",{"value":9.5,"currency":"USD"},{"eventID":"p1"});',
            id="track-standard",
        ),
        pytest.param(
            BrowserEvent("PlayedDemo", "c1", {"level": 3}),
            'fbq("trackCustom","PlayedDemo",{"level":3},{"eventID":"c1"});',
            id="track-custom",
        ),
        pytest.param(
            BrowserEvent("purchase", "c2"),
            'fbq("trackCustom","purchase",{},{"eventID":"c2"});',
            id="names-are-case-sensitive",
        ),
        pytest.param(
            BrowserEvent("Lead", "l1", pixel_id="222"),
            'fbq("trackSingle","222","Lead",{},{"eventID":"l1"});',
            id="track-single",
        ),
        pytest.param(
            BrowserEvent("Quiz", "q1", {"a": [1, 2]}, pixel_id="222"),
            'fbq("trackSingleCustom","222","Quiz",{"a":[1,2]},{"eventID":"q1"});',
            id="track-single-custom",
        ),
        pytest.param(
            BrowserEvent("ViewContent", "v1", MappingProxyType({"content_ids": ["a"]})),
            'fbq("track","ViewContent",{"content_ids":["a"]},{"eventID":"v1"});',
            id="mapping-proxy",
        ),
    ],
)
def test_track_calls(event: BrowserEvent, expected: str) -> None:
    assert calls(render(pixel_ids=["111", "222"], events=[PAGEVIEW, event]))[-1] == expected


def test_events_keep_their_order() -> None:
    events = [PAGEVIEW, BrowserEvent("AddToCart", "a"), BrowserEvent("Custom", "b")]
    lines = calls(render(events=events))
    assert [re.search(r'"eventID":"([^"]*)"', line).group(1) for line in lines[1:]] == [  # type: ignore[union-attr]
        "ev-page",
        "a",
        "b",
    ]


def test_no_events_still_initialises() -> None:
    assert calls(render(events=[])) == ['fbq("init","111");']


def test_no_pixel_is_an_error() -> None:
    with pytest.raises(ValueError, match="pixel"):
        render(pixel_ids=[])


# --------------------------------------------------------------------------------------------
# noscript


IMG = '<img height="1" width="1" style="display:none" alt="" src="{}"/>'


def test_noscript_image_per_pixel_for_pageview() -> None:
    html = render(
        pixel_ids=["111", "222"], events=[PAGEVIEW, BrowserEvent("Purchase", "p1", {"value": 1})]
    )
    noscript = html[html.index("</script>") + len("</script>") :]
    assert noscript == (
        "<noscript>"
        + IMG.format(
            "https://www.facebook.com/tr?id=111&amp;ev=PageView&amp;eid=ev-page&amp;noscript=1"
        )
        + IMG.format(
            "https://www.facebook.com/tr?id=222&amp;ev=PageView&amp;eid=ev-page&amp;noscript=1"
        )
        + "</noscript>"
    )


def test_noscript_pageview_for_one_pixel() -> None:
    html = render(pixel_ids=["111", "222"], events=[BrowserEvent("PageView", "e", pixel_id="222")])
    assert html.count("<img") == 1
    assert "id=222&amp;" in html


def test_noscript_values_are_url_encoded_and_escaped() -> None:
    html = render(events=[BrowserEvent("PageView", 'a&b"<c> d')])
    assert "eid=a%26b%22%3Cc%3E+d&amp;noscript=1" in html
    noscript = html[html.index("<noscript>") :]
    assert "<c>" not in noscript
    assert 'b"' not in noscript


@pytest.mark.parametrize(
    ("kwargs"),
    [
        pytest.param({"noscript": False}, id="disabled"),
        pytest.param({"events": [BrowserEvent("Purchase", "p")]}, id="no-pageview"),
    ],
)
def test_no_noscript(kwargs: dict[str, Any]) -> None:
    html = render(**kwargs)
    assert "<noscript>" not in html
    assert html.endswith("</script>")


# --------------------------------------------------------------------------------------------
# nonce


def test_no_nonce_attribute_by_default() -> None:
    assert render().startswith('<script data-pixelmirror="">')


def test_nonce_attribute() -> None:
    assert render(nonce="r4nd0m+/=").startswith('<script data-pixelmirror="" nonce="r4nd0m+/=">')


@pytest.mark.parametrize(
    ("nonce", "attribute"),
    [
        pytest.param(
            'x"><script>alert(1)</script>',
            'nonce="x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"',
            id="quote-break",
        ),
        pytest.param("a&b'c", 'nonce="a&amp;b&#x27;c"', id="amp-apostrophe"),
        pytest.param("né", 'nonce="n&#233;"', id="non-ascii"),
    ],
)
def test_nonce_is_attribute_escaped(nonce: str, attribute: str) -> None:
    html = render(nonce=nonce)
    assert html.startswith(f'<script data-pixelmirror="" {attribute}>')
    assert html.count("<script") == 1


def test_snippet_starts_with_marker() -> None:
    assert render_snippet(pixel_ids=["1"], external_id=None, events=[]).startswith(MARKER)


def test_render_rejects_non_finite_data() -> None:
    with pytest.raises(ValueError, match="finite"):
        render(events=[BrowserEvent("Purchase", "p", {"value": float("nan")})])


HOSTILE: Mapping[str, object] = {
    "content_name": XSS,
    "note": "<!-- hide the rest -->",
    "cdata": "]]><![CDATA[",
    XSS: "key too",
    "nested": {"list": ["</SCRIPT >", "<!--", "</script\n>"]},
    "ls": "\u2028alert(2)\u2029",
}


def test_hostile_custom_data_stays_inert() -> None:
    html = render(
        pixel_ids=["</script>"],
        external_id="</script><!--",
        agent="<!--",
        events=[BrowserEvent("PageView", XSS), BrowserEvent(XSS, XSS, HOSTILE, pixel_id="<!--")],
        nonce="</script>",
    )
    lowered = html.lower()
    assert lowered.count("</script") == 1
    assert lowered.index("</script") == lowered.index("</script>") == html.index("</script>")
    assert html.endswith("</script>") or html[html.index("</script>") + 9 :].startswith(
        "<noscript>"
    )
    assert "<!--" not in html
    assert "-->" not in html
    assert lowered.count("<script") == 1
    assert "\u2028" not in html
    assert "&lt;" not in script_body(html)  # no HTML entities inside the script
    assert "&amp;" not in script_body(html)


def test_snippet_is_ascii_for_unicode_data() -> None:
    html = render(events=[BrowserEvent("Purchase", "é", {"name": "Zoë 🛒"})], nonce="ñ")
    assert html.isascii()
    assert '"Zo\\u00eb \\ud83d\\uded2"' in html


# --------------------------------------------------------------------------------------------
# determinism


def test_identical_inputs_give_identical_bytes() -> None:
    def make() -> bytes:
        return render_snippet(
            pixel_ids=["1", "2"],
            external_id="v",
            events=[PAGEVIEW, BrowserEvent("Purchase", "p", {"tags": {"b", "a", "c"}, "v": 1})],
            nonce="n",
            agent="a",
            ldu=True,
            auto_config=False,
        )

    assert make() == make()


def test_custom_data_key_order_is_the_callers() -> None:
    one = render(events=[BrowserEvent("Purchase", "p", {"a": 1, "b": 2})])
    two = render(events=[BrowserEvent("Purchase", "p", {"b": 2, "a": 1})])
    assert '{"a":1,"b":2}' in one
    assert '{"b":2,"a":1}' in two


def test_browser_event_defaults() -> None:
    event = BrowserEvent("PageView", "e")
    assert dict(event.custom_data) == {}
    assert event.pixel_id is None
    assert BrowserEvent("PageView", "e").custom_data is not event.custom_data


# --------------------------------------------------------------------------------------------
# the JavaScript really runs: node with a fake document

NODE = shutil.which("node")

HARNESS = r"""
const vm = require("vm");
const src = require("fs").readFileSync(0, "utf8");
const inserted = [];
const document = {
  createElement(tag) { return {tag}; },
  head: {appendChild(node) { inserted.push(node); }},
};
const sandbox = {document};
sandbox.window = sandbox;
if (process.argv[1] === "preset") {
  sandbox.fbq = function () { sandbox.presetCalls.push(Array.from(arguments)); };
  sandbox.presetCalls = [];
}
vm.createContext(sandbox);
vm.runInContext(src, sandbox);
const f = sandbox.fbq;
const out = {
  inserted: inserted.map(n => ({tag: n.tag, src: n.src, async: n.async})),
  queue: f.queue ? f.queue.map(a => Array.from(a)) : null,
  preset: sandbox.presetCalls ? sandbox.presetCalls.slice() : null,
  loaded: f.loaded, version: f.version, pushIsSelf: f.push === f, alias: sandbox._fbq === f,
};
// After fbevents.js loads it installs callMethod; later calls must reach it.
const late = [];
f.callMethod = function () { late.push(Array.from(arguments)); };
f("track", "Lead", {}, {eventID: "late"});
out.late = late;
out.queueAfter = f.queue ? f.queue.length : null;
process.stdout.write(JSON.stringify(out));
"""


def run_in_node(html: str, *args: str) -> dict[str, Any]:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "-e", HARNESS, *args],
        input=script_body(html),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


@needs_node
def test_js_queues_the_expected_calls() -> None:
    html = render(
        pixel_ids=["111", "222"],
        external_id="visitor-1",
        agent="pm",
        ldu=True,
        auto_config=False,
        events=[
            PAGEVIEW,
            BrowserEvent("Purchase", "p1", {"value": 49.99, "currency": "USD", "x": XSS}),
            BrowserEvent("Quiz", "q1", dict(HOSTILE), pixel_id="222"),
        ],
    )
    out = run_in_node(html)
    assert out["inserted"] == [
        {"tag": "script", "src": "https://connect.facebook.net/en_US/fbevents.js", "async": True}
    ]
    assert out["loaded"] is True
    assert out["version"] == "2.0"
    assert out["pushIsSelf"] is True
    assert out["alias"] is True
    assert out["queue"] == [
        ["dataProcessingOptions", ["LDU"], 0, 0],
        ["set", "autoConfig", False, "111"],
        ["init", "111", {"external_id": "visitor-1"}, {"agent": "pm"}],
        ["set", "autoConfig", False, "222"],
        ["init", "222", {"external_id": "visitor-1"}, {"agent": "pm"}],
        ["track", "PageView", {}, {"eventID": "ev-page"}],
        ["track", "Purchase", {"value": 49.99, "currency": "USD", "x": XSS}, {"eventID": "p1"}],
        ["trackSingleCustom", "222", "Quiz", json.loads(json.dumps(HOSTILE)), {"eventID": "q1"}],
    ]
    assert out["late"] == [["track", "Lead", {}, {"eventID": "late"}]]
    assert out["queueAfter"] == len(out["queue"])


@needs_node
def test_js_keeps_an_existing_fbq() -> None:
    out = run_in_node(render(), "preset")
    assert out["inserted"] == []
    assert out["preset"] == [
        ["init", "111"],
        ["track", "PageView", {}, {"eventID": "ev-page"}],
    ]


# --------------------------------------------------------------------------------------------
# pages that wait for the beacon before loading anything


def test_the_pending_snippet_holds_the_base_code_only_inside_load() -> None:
    html = render_beacon_snippet(pixel_ids=["111"], nonce="n", pending=True).decode("ascii")
    (body,) = script_body(html).split("\n")  # the runtime alone: no stub line, no calls
    assert body.count("fbevents.js") == 1
    load = body.index("function load(){")
    assert load < body.index("fbevents.js") < body.index("function init(")
    assert '"pending":true' in body
    assert '"fallback":false' in body
    assert "<noscript>" not in html
    assert html == render_beacon_snippet(pixel_ids=["111"], nonce="n", pending=True).decode("ascii")


@pytest.mark.parametrize("gated", [False, True])
def test_a_beacon_page_loads_the_pixel_at_once_only_when_the_site_asks_no_consent(
    gated: bool,
) -> None:
    html = render_beacon_snippet(pixel_ids=["111"], gated=gated).decode("ascii")
    lines = script_body(html).split("\n")
    assert len(lines) == (1 if gated else 2)  # the stub runs first only on an open site
    assert lines[-1].count("fbevents.js") == (1 if gated else 0)
    assert ("<noscript>" in html) is not gated


def _random_snippet_inputs(rng: random.Random) -> dict[str, Any]:
    """render_snippet's arguments: random option sets, ids, nonces and events, now and then
    holding markup, ``%``, NUL, non-ASCII text or the template's own stand-ins."""
    odd = "aZ09-_.~%<>&\"' /é€\u2028\x00"

    def some(chars: str, low: int, high: int) -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randint(low, high)))

    def ident() -> str:
        return rng.choice(
            [
                uuid.uuid4().hex,
                str(rng.randint(1, 10**15)),
                some(odd, 0, 12),
                "PMxEIDxSLOT",
                "PMxEXTxSLOT",
            ]
        )

    pixel_ids = [
        rng.choice([str(rng.randint(1, 10**15)), ident()]) for _ in range(rng.randint(0, 3))
    ]
    if rng.random() < 0.7:
        events = [BrowserEvent("PageView", ident())]
    else:
        events = [
            BrowserEvent(
                rng.choice(["PageView", "Purchase", "Custom%"]),
                ident(),
                rng.choice([{}, {"value": 1.5, "currency": "EUR"}, {"k": some(odd, 0, 6)}]),
                rng.choice([None, None, str(rng.randint(1, 99))]),
            )
            for _ in range(rng.randint(0, 3))
        ]
    return {
        "pixel_ids": pixel_ids,
        "external_id": rng.choice([None, uuid.uuid4().hex * 2, some(odd, 0, 12), "PMxEXTxSLOT"]),
        "events": events,
        "nonce": rng.choice([None, None, some(odd, 0, 16), "PMxNONCExSLOT"]),
        "agent": rng.choice([None, "plpixelmirror", some(odd, 1, 8)]),
        "ldu": rng.random() < 0.3,
        "auto_config": rng.random() < 0.7,
        "noscript": rng.random() < 0.8,
        "beacon_path": rng.choice([DEFAULT_BEACON_PATH, "/%s/" + some(odd, 0, 6)]),
    }


@pytest.mark.parametrize("seed", range(4))
def test_a_lone_pageview_renders_byte_for_byte_as_the_general_path(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        args = _random_snippet_inputs(rng)
        try:
            expected: object = snippet._render(**args)
        except ValueError as exc:
            expected = ("ValueError", str(exc))
        try:
            got: object = render_snippet(**args)
        except ValueError as exc:
            got = ("ValueError", str(exc))
        assert got == expected, args
        events = args["events"]
        event = events[0] if len(events) == 1 else None
        if event and event.name == "PageView" and not event.pixel_id and not event.custom_data:
            # What Pages asks for a page with nothing else to fire: None or the same bytes.
            options = {k: v for k, v in args.items() if k != "events"}
            try:
                alone: object = snippet.page_view_snippet(event_id=event.event_id, **options)
            except ValueError as exc:
                alone = ("ValueError", str(exc))
            assert alone in (None, expected), args

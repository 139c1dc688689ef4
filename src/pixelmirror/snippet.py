"""The browser side: Meta Pixel base code, ``init`` and ``track`` calls, rendered for one page.

Pure: it renders :class:`~pixelmirror.events.BrowserEvent` objects under the one JSON policy
of :func:`~pixelmirror.events.json_default`. Every dynamic value (pixel ids, event names and
ids, custom data, agent) goes through :func:`~pixelmirror.escaping.safe_json`, which cannot
close the ``<script>`` element or open an HTML comment, whatever the data holds. Nothing is
HTML-entity-escaped inside the script; only the ``nonce`` attribute and the ``<noscript>``
image URL, which live in HTML, are.

The output is ASCII bytes and a pure function of the arguments, so identical inputs give
identical bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from urllib.parse import urlencode

from pixelmirror.escaping import URL_PLAIN, attribute, json_string, safe_json, script_safe
from pixelmirror.events import BrowserEvent
from pixelmirror.meta import STANDARD_EVENTS

__all__ = [
    "DEFAULT_BEACON_PATH",
    "MARKER",
    "page_view_snippet",
    "render_beacon_snippet",
    "render_snippet",
]

#: How every rendered snippet begins; :mod:`pixelmirror.inject` looks for it to avoid a
#: second injection.
MARKER = b"<script data-pixelmirror"
_OPEN = MARKER.decode("ascii") + '=""'

FBEVENTS_URL = "https://connect.facebook.net/en_US/fbevents.js"
NOSCRIPT_URL = "https://www.facebook.com/tr"

# The queueing stub. Until fbevents.js loads, ``fbq(...)`` stores its arguments in
# ``fbq.queue``; the library then replays the queue and installs ``fbq.callMethod``, to which
# later calls go. A page that already defines ``fbq`` keeps its own. The text holds no ``<``,
# ``>`` or ``&`` so it is also well-formed inside an XHTML (XML) page.
_STUB = (
    "(function(w,d){if(w.fbq)return;"
    "var f=function(){if(f.callMethod){f.callMethod.apply(f,arguments)}"
    "else{f.queue.push(arguments)}};"
    "w.fbq=f;if(!w._fbq)w._fbq=f;"
    "f.push=f;f.loaded=true;f.version='2.0';f.queue=[];"
    "var s=d.createElement('script');s.async=true;"
    f"s.src='{FBEVENTS_URL}';"
    "(d.head||d.documentElement).appendChild(s)"
    "})(window,document);"
)

DEFAULT_BEACON_PATH = "/.pixelmirror/beacon"

# ``window.pixelmirror``, on every page the snippet goes in, configured by the JSON object ``c``:
#   fire(list)        fire server-announced events ``{event, eventID, custom_data?,
#                     pixel_id?}`` (a pixel_id: that pixel only, with trackSingle) (the
#                     X-PixelMirror-Events header of a JSON route, or a beacon's answer);
#   track(name, data) ask the beacon endpoint for an eventID (it mirrors the server copy),
#                     then fire; pageview() the same for a PageView (single-page apps);
#   consent(yes)      the visitor answered the site's banner: true counts this page's
#                     PageView through the beacon unless it already counted (once, however
#                     often it is called); false revokes the pixel on this page
#                     (fbq('consent','revoke')) and nothing fires after it.
# In beacon mode (``c.beacon``) and on a consent-pending page (``c.pending``: the server saw
# no consent) ``init`` waits for the beacon's external_id, the page's PageView goes through the
# beacon, and the pixel's own pushState PageViews (which carry no eventID and cannot dedup)
# are switched off, as they are once a page calls pageview(). A beacon-mode page asks at once;
# a pending page waits for consent(true). A refused beacon (no consent, a crawler, a bad
# request) fires nothing; one that fails (the network, 429, 5xx) fires the events without
# eventID, unless the site gates on consent (``c.fallback`` false). A gated site's pages that
# wait for the beacon load nothing from Meta before an answer fires something: the base code
# is rendered inside load() (elsewhere load() is empty and the base code runs first).
# ``c.gpc``: a browser sending Global Privacy Control refuses on its own, as the server does.
# Like the stub, the text holds no ``<``, ``>`` or ``&``.
_RUNTIME = (
    "(function(w,d,c){"
    "var wait=c.beacon||c.pending,inited=!wait,counted=!wait,flight=null,"
    "refused=c.gpc?w.navigator.globalPrivacyControl===true:false,P=w.pixelmirror={};"
    "function load(){%s}"
    "function init(ext){if(inited)return;inited=true;load();w.fbq.disablePushState=true;"
    "if(c.ldu)fbq('dataProcessingOptions',['LDU'],0,0);"
    "for(var i=0;i!==c.pixels.length;i++){var p=c.pixels[i],u=ext?{external_id:ext}:{};"
    "if(!c.autoConfig)fbq('set','autoConfig',false,p);"
    "if(c.agent){fbq('init',p,u,{agent:c.agent})}else{fbq('init',p,u)}}}"
    "function fire(list){if(refused||!list.length)return;init(null);"
    "for(var i=0;i!==list.length;i++){var e=list[i],"
    "m=c.standard.indexOf(e.event)===-1?'Custom':'',"
    "a=[e.event,e.custom_data||{}];"
    "if(e.eventID)a.push({eventID:e.eventID});"
    "if(e.pixel_id){a.unshift('trackSingle'+m,e.pixel_id)}else{a.unshift('track'+m)}"
    "w.fbq.apply(w,a)}}"
    "function send(events){"
    "if(refused)return Promise.resolve([]);"
    "return w.fetch(c.path,{method:'POST',credentials:'same-origin',"
    "headers:{'Content-Type':'application/json'},"
    "body:JSON.stringify({url:w.location.href,referrer:d.referrer,events:events})})"
    ".then(function(r){if(r.ok)return r.json();"
    "if(r.status===429||Math.floor(r.status/100)===5)"
    "throw new Error('pixelmirror beacon: HTTP '+r.status);"
    "return {events:[]}})"
    ".then(function(a){if(refused)return [];"
    "if(a.events.length)init(a.external_id);fire(a.events);return a.events},"
    "function(){if(!c.fallback||refused)return [];fire(events);return events})}"
    "function view(){if(counted)return Promise.resolve([]);"
    "if(!flight)flight=P.pageview()"
    ".then(function(e){flight=null;if(e.length)counted=true;return e});"
    "return flight}"
    "P.fire=fire;"
    "P.track=function(name,data){return send([{event:name,custom_data:data||{}}])};"
    "P.pageview=function(){if(w.fbq)w.fbq.disablePushState=true;return send([{event:'PageView'}])};"
    "P.consent=function(yes){"
    "if(!yes){if(!refused)if(w.fbq)w.fbq('consent','revoke');"
    "refused=true;return Promise.resolve([])}"
    "return flight?flight.then(view):view()};"
    "if(c.beacon)view()"
    "})(window,document,"
)


def _call(*args: object) -> str:
    return "fbq(" + ",".join([safe_json(arg) for arg in args]) + ");"


def render_snippet(
    *,
    pixel_ids: Sequence[str],
    external_id: str | None,
    events: Sequence[BrowserEvent],
    nonce: str | None = None,
    agent: str | None = None,
    ldu: bool = False,
    auto_config: bool = True,
    noscript: bool = True,
    beacon_path: str = DEFAULT_BEACON_PATH,
) -> bytes:
    """The ``<script>`` (and ``<noscript>``) that loads the pixel and fires ``events``.

    In order: the ``fbq`` stub; ``dataProcessingOptions`` LDU with geolocation when ``ldu``
    (global, so once, before any ``init``); per pixel, ``set autoConfig false`` when not
    ``auto_config``, then ``init`` with ``{external_id}`` when given and ``{agent}`` when given;
    then each event in order with its ``eventID``. With ``noscript``, one fallback image per
    pixel for each ``PageView`` event.

    ``nonce`` is the page's CSP nonce, set on the ``<script>`` so a strict policy runs it.

    :raises ValueError: no pixel id, or data that JSON cannot carry (see
        :func:`~pixelmirror.escaping.safe_json`).
    """
    if len(events) == 1:
        event = events[0]
        if event.name == "PageView" and event.pixel_id is None and not event.custom_data:
            # Most pages fire their PageView alone: the same text but for the ids.
            filled = page_view_snippet(
                pixel_ids=pixel_ids,
                external_id=external_id,
                event_id=event.event_id,
                nonce=nonce,
                agent=agent,
                ldu=ldu,
                auto_config=auto_config,
                noscript=noscript,
                beacon_path=beacon_path,
            )
            if filled is not None:
                return filled
    return _render(
        pixel_ids, external_id, events, nonce, agent, ldu, auto_config, noscript, beacon_path
    )


def page_view_snippet(
    *,
    pixel_ids: Sequence[str],
    external_id: str | None,
    event_id: str,
    nonce: str | None,
    agent: str | None,
    ldu: bool,
    auto_config: bool,
    beacon_path: str,
    noscript: bool = True,
) -> bytes | None:
    """:func:`render_snippet` of a lone ``PageView`` (no custom data, every pixel) with this
    ``event_id``, filled into its option set's text, rendered once; None when the values or
    the options do not fit a template (render it the general way then).
    """
    if type(event_id) is not str or not event_id.isascii():
        return None
    eid = event_id.encode("ascii")
    # Letters and digits (as ids are) are JSON and URL text as they are; bytes.isalnum is
    # a table lookup per byte, str.isalnum a Unicode database one.
    if not eid.isalnum() and not URL_PLAIN.fullmatch(event_id):
        return None
    if external_id is None:
        ext = b""
    elif type(external_id) is not str:
        return None
    elif external_id.isascii() and (raw := external_id.encode("ascii")).isalnum():  # a hash
        ext = b'"' + raw + b'"'
    else:
        ext = script_safe(json_string(external_id)).encode("ascii")
    if nonce is None:
        attr = b""
    elif type(nonce) is not str:
        return None
    else:
        attr = attribute(nonce).encode("ascii")
    template = _page_view_template(
        tuple(pixel_ids),
        external_id is not None,
        nonce is not None,
        agent,
        ldu,
        auto_config,
        noscript,
        beacon_path,
    )
    if template is None:
        return None
    texts, slots = template
    values = (attr, ext, b'"' + eid + b'"', eid)
    parts = list(texts)
    for at, which in slots:
        parts[at] = values[which]
    return b"".join(parts)


def _render(
    pixel_ids: Sequence[str],
    external_id: str | None,
    events: Sequence[BrowserEvent],
    nonce: str | None,
    agent: str | None,
    ldu: bool,
    auto_config: bool,
    noscript: bool,
    beacon_path: str,
) -> bytes:
    """:func:`render_snippet`, the general way: every call from its parts."""
    _need_pixels(pixel_ids)
    lines = [_STUB, _runtime(pixel_ids, beacon_path, agent, ldu, auto_config, kind="inline")]
    if ldu:
        # 0, 0: let Meta geolocate the visitor to decide whether LDU applies.
        lines.append(_call("dataProcessingOptions", ["LDU"], 0, 0))
    for pixel_id in pixel_ids:
        if not auto_config:
            lines.append(_call("set", "autoConfig", False, pixel_id))
        init: list[object] = ["init", pixel_id]
        if external_id is not None or agent is not None:
            init.append({"external_id": external_id} if external_id is not None else {})
        if agent is not None:
            init.append({"agent": agent})
        lines.append(_call(*init))
    for event in events:
        custom = event.custom_data
        data = custom if isinstance(custom, dict) else dict(custom)
        options = {"eventID": event.event_id}
        standard = event.name in STANDARD_EVENTS
        if event.pixel_id is None:
            method = "track" if standard else "trackCustom"
            lines.append(_call(method, event.name, data, options))
        else:
            method = "trackSingle" if standard else "trackSingleCustom"
            lines.append(_call(method, event.pixel_id, event.name, data, options))
    images = [
        _noscript_image(pixel_id, event.event_id)
        for event in events
        if event.name == "PageView"
        for pixel_id in ((event.pixel_id,) if event.pixel_id is not None else pixel_ids)
    ]
    return _script(lines, nonce, images if noscript else [])


# Stand-ins rendered where the page's own values go: letters only, so no escaping changes them.
_NONCE, _EXT, _EID = "PMxNONCExSLOT", "PMxEXTxSLOT", "PMxEIDxSLOT"
# Where each value goes, once the stand-in around it is known: the nonce attribute's text,
# the external id's JSON string, the event id's JSON string and the event id in the image URL;
# each becomes its index in render_snippet's values between two marks.
_SLOTS = (f'nonce="{_NONCE}"', f'"{_EXT}"', f'"{_EID}"', f"eid={_EID}")
_MARKED = ('nonce="\x000\x00"', "\x001\x00", "\x002\x00", "eid=\x003\x00")
# JSON and the URL escape it, so the settings render none (checked all the same): it can
# only be a slot's mark.
_MARK = "\x00"


@functools.lru_cache(maxsize=64)
def _page_view_template(
    pixel_ids: tuple[str, ...],
    with_external_id: bool,
    with_nonce: bool,
    agent: str | None,
    ldu: bool,
    auto_config: bool,
    noscript: bool,
    beacon_path: str,
) -> tuple[tuple[bytes, ...], tuple[tuple[int, int], ...]] | None:
    """:func:`render_snippet` of a lone PageView for these settings, as its text's parts
    (ASCII bytes, an empty one where a value goes) and its slots: each value's place among
    the parts and its index (nonce, external id JSON, event id JSON, event id); None when
    the settings themselves hold a stand-in or a mark (the general path then renders every
    such page).

    Joined, not ``%``-formatted: formatting reads the whole text, some 3 KB, every page.
    """
    rendered = _render(
        pixel_ids,
        _EXT if with_external_id else None,
        [BrowserEvent("PageView", _EID)],
        _NONCE if with_nonce else None,
        agent,
        ldu,
        auto_config,
        noscript,
        beacon_path,
    ).decode("ascii")
    images = len(pixel_ids) if noscript else 0
    expected = (
        (_NONCE, int(with_nonce)),
        (_EXT, len(pixel_ids) if with_external_id else 0),
        (_EID, 1 + images),
    )
    if _MARK in rendered or any(rendered.count(slot) != count for slot, count in expected):
        return None
    for slot, marked in zip(_SLOTS, _MARKED, strict=True):
        rendered = rendered.replace(slot, marked)
    if any(slot in rendered for slot, _ in expected):
        return None
    texts = rendered.split(_MARK)
    # Odd places hold the marks' indices, even ones the literal text between them.
    parts = tuple(b"" if place % 2 else text.encode("ascii") for place, text in enumerate(texts))
    slots = tuple((place, int(text)) for place, text in enumerate(texts) if place % 2)
    return parts, slots


def render_beacon_snippet(
    *,
    pixel_ids: Sequence[str],
    beacon_path: str = DEFAULT_BEACON_PATH,
    nonce: str | None = None,
    agent: str | None = None,
    ldu: bool = False,
    auto_config: bool = True,
    gated: bool = False,
    gpc: bool = False,
    pending: bool = False,
) -> bytes:
    """A snippet whose events come from the beacon: the same bytes for every visitor of a page.

    Beacon mode's: no event id and no visitor data: on load it POSTs to ``beacon_path``, which
    mints the visitor's ids and the PageView's eventID and mirrors the server copy; then it
    calls ``init`` with the external_id it got back and fires the PageView with that eventID.
    With ``gated`` (the site asks for consent) only the beacon's answer fires anything: no
    ``<noscript>`` image, no firing without eventID when the beacon fails, and nothing loads
    from Meta until the beacon answers with events (a refused one waits for
    ``pixelmirror.consent(true)``). ``gpc``: a browser's Global Privacy Control refuses.

    With ``pending``, inline mode's consent-pending snippet, for a page served before the
    visitor consented (gated, whatever ``gated`` says): it only defines
    ``window.pixelmirror``, so nothing loads from Meta and nothing fires. The site's banner
    calls ``pixelmirror.consent(true)`` once it has set its consent cookie; the beacon then
    mints the ids, mirrors the page's PageView and answers with its eventID, and only then
    the pixel loads, initialised with the beacon's external_id, and fires that PageView.
    """
    _need_pixels(pixel_ids)
    gated = gated or pending
    kind = "pending" if pending else "beacon"
    runtime = _runtime(
        pixel_ids, beacon_path, agent, ldu, auto_config, kind=kind, gated=gated, gpc=gpc
    )
    if gated:
        return _script([runtime], nonce, [])
    images = [_noscript_image(pixel_id, None) for pixel_id in pixel_ids]
    return _script([_STUB, runtime], nonce, images)


def _need_pixels(pixel_ids: Sequence[str]) -> None:
    if not pixel_ids:
        raise ValueError("a snippet needs at least one pixel id")


def _runtime(
    pixel_ids: Sequence[str],
    beacon_path: str,
    agent: str | None,
    ldu: bool,
    auto_config: bool,
    *,
    kind: str,
    gated: bool = False,
    gpc: bool = False,
) -> str:
    # The same few settings on every page of a site: render each combination once.
    return _runtime_text(tuple(pixel_ids), beacon_path, agent, ldu, auto_config, kind, gated, gpc)


@functools.lru_cache(maxsize=64)
def _runtime_text(
    pixel_ids: tuple[str, ...],
    beacon_path: str,
    agent: str | None,
    ldu: bool,
    auto_config: bool,
    kind: str,
    gated: bool,
    gpc: bool,
) -> str:
    config = {
        "pixels": list(pixel_ids),
        "path": beacon_path,
        "agent": agent,
        "ldu": ldu,
        "autoConfig": auto_config,
        "beacon": kind == "beacon",
        "pending": kind == "pending",
        "fallback": not gated,
        "gpc": gpc,
        "standard": sorted(STANDARD_EVENTS),
    }
    # A gated page that waits for the beacon loads the base code only once something fires.
    lazy = gated and kind != "inline"
    return _RUNTIME % (_STUB if lazy else "") + safe_json(config) + ");"


def _script(lines: Sequence[str], nonce: str | None, images: Sequence[str]) -> bytes:
    # ``data-pixelmirror=""`` and ``<img .../>`` keep the markup well-formed XML as well as
    # HTML, so an ``application/xhtml+xml`` page still parses.
    parts = [_OPEN]
    if nonce is not None:
        parts.append(' nonce="' + attribute(nonce) + '"')
    parts.append(">")
    parts.append("\n".join(lines))
    parts.append("</script>")
    if images:
        parts.append("<noscript>" + "".join(images) + "</noscript>")
    return "".join(parts).encode("ascii")


def _noscript_image(pixel_id: str, event_id: str | None) -> str:
    if URL_PLAIN.fullmatch(pixel_id) and (event_id is None or URL_PLAIN.fullmatch(event_id)):
        eid = "" if event_id is None else f"&amp;eid={event_id}"
        return (
            '<img height="1" width="1" style="display:none" alt="" src="'
            f'{NOSCRIPT_URL}?id={pixel_id}&amp;ev=PageView{eid}&amp;noscript=1"/>'
        )
    params = [("id", pixel_id), ("ev", "PageView")]
    if event_id is not None:
        params.append(("eid", event_id))
    query = urlencode([*params, ("noscript", "1")])
    return (
        '<img height="1" width="1" style="display:none" alt="" src="'
        + attribute(f"{NOSCRIPT_URL}?{query}")
        + '"/>'
    )

"""The PageView of a page, built straight: what :meth:`ServerEvent.create` builds, byte for
byte, without its generic layers.

Every injected page mirrors one PageView per pixel, so this is the request path's hottest
event. Anything off the usual road goes through :meth:`ServerEvent.create`; a randomized test
keeps the two byte-identical.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

from pixelmirror.events import ENCODER, META, ServerEvent, encode_string, match_signature
from pixelmirror.meta import LIMITED_DATA_USE, identifies_user
from pixelmirror.normalize import default_country_code, normalize_user_data


def page_views(
    pixel_ids: Sequence[str],
    *,
    event_id: str,
    user_data: Mapping[str, object],
    user_wire: tuple[str, tuple[str, ...]] | None = None,
    event_source_url: str | None,
    referrer_url: str | None = None,
    data_processing_options: Sequence[str] | None = None,
    test_event_code: str | None = None,
    default_country: str | None = None,
    now: float | None = None,
) -> list[ServerEvent]:
    """A website PageView without custom data for each of ``pixel_ids``: what
    :meth:`ServerEvent.create` builds for each, byte for byte, made once per page.

    Every page view takes this road, so it skips the generic layers: the user data is
    normalised once for all the pixels and the payload written straight. Anything off the
    usual road (a URL that is not http(s), an odd id, options other than none or LDU, user
    data Meta would refuse) goes through :meth:`ServerEvent.create`, which raises what it
    raises. ``user_wire``: the JSON text and wire keys of ``user_data`` when the caller has
    them already (a visitor's own, :attr:`Visitor.wire <pixelmirror.identity.Visitor.wire>`).
    """
    events = straight_page_views(
        pixel_ids,
        event_id,
        user_wire,
        user_data,
        event_source_url,
        referrer_url,
        data_processing_options,
        test_event_code,
        default_country,
        now,
    )
    if events is not None:
        return events
    return [
        ServerEvent.create(
            "PageView",
            pixel_id=pixel_id,
            action_source="website",
            user_data=user_data,
            event_id=event_id,
            event_source_url=event_source_url,
            referrer_url=referrer_url,
            data_processing_options=data_processing_options,
            test_event_code=test_event_code,
            default_country=default_country,
            now=now,
        )
        for pixel_id in pixel_ids
    ]


def straight_page_views(
    pixel_ids: Sequence[str],
    event_id: str,
    user_wire: tuple[str, tuple[str, ...]] | None,
    user_data: Mapping[str, object] | None,
    event_source_url: str | None,
    referrer_url: str | None,
    data_processing_options: Sequence[str] | None,
    test_event_code: str | None,
    default_country: str | None,
    now: float | None = None,
) -> list[ServerEvent] | None:
    """:func:`page_views` on the usual road, or None off it (then create builds them).
    Positional, for the page's one call on every request.

    ``user_wire``, the wire JSON and keys of the visitor's own user data, is written as it
    is; without it ``user_data`` is normalised, and None is off the road: a caller that has
    the wire form makes the dict only when it must.
    """
    # The checks create makes before it normalises come first, so errors come in its order.
    if not pixel_ids or type(event_id) is not str or not 0 < len(event_id) <= 256:
        return None
    if user_wire is not None and "client_user_agent" in user_wire[1]:
        if default_country is not None:
            default_country_code(default_country)  # raises what normalising would
        user = user_wire
    elif user_data is not None:
        found = _page_user_data(user_data, default_country)
        if found is None:
            return None
        user = found
    else:
        return None
    return _written(
        pixel_ids,
        event_id,
        user,
        event_source_url,
        referrer_url,
        data_processing_options,
        test_event_code,
        now,
    )


def _written(
    pixel_ids: Sequence[str],
    event_id: str,
    user: tuple[str, tuple[str, ...]],
    event_source_url: str | None,
    referrer_url: str | None,
    data_processing_options: Sequence[str] | None,
    test_event_code: str | None,
    now: float | None,
) -> list[ServerEvent] | None:
    """The PageViews with ``user``'s wire JSON and keys written in, or None when the URLs or
    options are off the usual road."""
    if (
        # http(s) URLs, tested here rather than by a function called for each.
        not (isinstance(event_source_url, str) and event_source_url.startswith(_HTTP))
        or not (
            referrer_url is None
            or (isinstance(referrer_url, str) and referrer_url.startswith(_HTTP))
        )
        or not (data_processing_options is None or list(data_processing_options) in _LDU_OR_NONE)
    ):
        return None
    user_json, wire_keys = user
    when = int(time.time() if now is None else now)
    referrer = "" if referrer_url is None else f',"referrer_url":{encode_string(referrer_url)}'
    if data_processing_options is None:
        options = ""
    else:
        options = _LDU_JSON if data_processing_options else ',"data_processing_options":[]'
    payload = (
        f'{{"event_name":"PageView","event_time":{when},"event_id":{encode_string(event_id)},'
        f'"action_source":"website","user_data":{user_json},'
        f'"event_source_url":{encode_string(event_source_url)}{referrer}{options}}}'
    ).encode()
    code = test_event_code or None
    match = match_signature("PageView", wire_keys, "website", event_source_url)
    return [
        ServerEvent(pixel_id, event_id, "PageView", when, "website", payload, code, META, match)
        for pixel_id in pixel_ids
    ]


def _page_user_data(
    user_data: Mapping[str, object], default_country: str | None
) -> tuple[str, tuple[str, ...]] | None:
    """The wire user data's JSON for a website event and its keys, or None when Meta would
    refuse it (no user agent, too little to identify the user).

    A visitor's pages repeat their user data (the same ids, address and browser): the text
    of the last few hundred plain ones is kept. Only data none of whose values was dropped
    is kept, so each drop's warning is still logged every time.
    """
    key = None
    if type(user_data) is dict:
        items = tuple(user_data.items())
        for name, value in items:  # a loop: all() over a generator costs more for five
            if type(name) is not str or (value is not None and type(value) is not str):
                break
        else:
            key = (default_country, items)
            kept = _PAGE_USER_DATA.get(key)
            if kept is not None:
                return kept
    wire = normalize_user_data(user_data, default_country=default_country)
    if "client_user_agent" not in wire or not identifies_user(wire):
        return None
    made = _user_data_json(wire), tuple(wire)
    if key is not None and len(wire) == sum(value is not None for _, value in key[1]):
        if len(_PAGE_USER_DATA) >= _PAGE_USER_DATA_KEPT:
            _PAGE_USER_DATA.clear()  # simpler than an LRU, and a miss costs only the rules
        _PAGE_USER_DATA[key] = made
    return made


_PAGE_USER_DATA_KEPT = 512
_PAGE_USER_DATA: dict[
    tuple[str | None, tuple[tuple[str, object], ...]], tuple[str, tuple[str, ...]]
] = {}


def _user_data_json(wire: Mapping[str, object]) -> str:
    """``ENCODER.encode(wire)`` for wire user data, whose values are strings or lists of
    them; written straight (the encoder sets itself up again on every call)."""
    items = []
    for key, value in wire.items():
        if type(value) is str:
            items.append(f"{encode_string(key)}:{encode_string(value)}")
        elif type(value) is list and all(type(item) is str for item in value):
            items.append(f"{encode_string(key)}:[{','.join(map(encode_string, value))}]")
        else:
            return ENCODER.encode(wire)
    return "{" + ",".join(items) + "}"


_HTTP = ("http://", "https://")


_LDU_OR_NONE: tuple[list[str], ...] = ([], [LIMITED_DATA_USE])
# What _processing_options gives for LDU with the default geolocation (country and state 0).
_LDU_JSON = (
    f',"data_processing_options":[{json.dumps(LIMITED_DATA_USE)}],'
    '"data_processing_options_country":0,"data_processing_options_state":0'
)

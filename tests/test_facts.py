from __future__ import annotations

import inspect
import random
from dataclasses import MISSING, FrozenInstanceError, fields, replace

import pytest

from pixelmirror import facts as facts_module
from pixelmirror.facts import RequestFacts, parse_cookies


def _facts(cookie: str | None) -> RequestFacts:
    headers = {} if cookie is None else {"cookie": cookie}
    return RequestFacts("GET", "https", "shop.example", "/", "", headers)


def _pairs(header: str) -> list[tuple[str, str]]:
    """The cookie pairs as the rules read them: ``name=value`` split on ``;``, both sides
    trimmed, one pair of double quotes removed, pairs without ``=`` or a name skipped."""
    pairs = []
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        if sep and name.strip():
            value = value.strip()
            if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
                value = value[1:-1]
            pairs.append((name.strip(), value))
    return pairs


@pytest.mark.parametrize("seed", range(4))
def test_cookies_and_cookie_values_read_random_headers_as_the_rules_say(seed: int) -> None:
    rng = random.Random(seed)
    pieces = ["a", "b", "_pm_vid", "=", " ", ";", '"', "x1", "=v", "é"]
    for _ in range(500):
        header = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        facts = _facts(header)
        pairs = _pairs(header)
        first: dict[str, str] = {}
        for name, value in pairs:
            first.setdefault(name, value)
        assert facts.cookies == first, header
        for name in {"a", "b", "_pm_vid", "x1", "missing", *first}:
            assert facts.cookie_values(name) == [v for n, v in pairs if n == name], header


@pytest.mark.parametrize("seed", range(3))
def test_a_header_sent_again_reads_as_its_first_parse(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parse kept for a header answers later requests with it just as a fresh parse does,
    # among other headers, past the bound of kept ones, and a header too long to keep.
    monkeypatch.setattr(facts_module, "_JARS_KEPT", 16)
    rng = random.Random(seed)
    pieces = ["a", "_pm_vid", "=", " ", ";", '"', "x1", "=v", "é", "_fbp=fb.1.1.2"]
    headers = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 20))) for _ in range(60)]
    headers.append("a=" + "x" * 5000 + "; b=1")
    for _ in range(2000):
        header = rng.choice(headers)
        facts = _facts(header)
        first, repeated = parse_cookies(header)
        assert facts.cookies == first, header
        for name in {"a", "_pm_vid", "missing", *first}:
            alone = [first[name]] if name in first else []
            assert facts.cookie_values(name) == repeated.get(name, alone), header
        assert len(facts_module._JARS) <= 16


def test_a_request_without_cookies_has_none() -> None:
    facts = _facts(None)
    assert facts.cookies == {}
    assert facts.cookie_values("_pm_vid") == []


def test_the_cookies_of_a_header_kept_for_all_cannot_be_changed() -> None:
    facts = _facts("a=1")
    with pytest.raises(TypeError):
        facts.cookies["a"] = "2"  # type: ignore[index]
    assert _facts("a=1").cookies == {"a": "1"}


def test_cookie_values_hands_out_a_copy() -> None:
    facts = _facts("a=1; a=2")
    facts.cookie_values("a").append("3")
    assert facts.cookie_values("a") == ["1", "2"]


def test_the_constructor_takes_the_fields_in_order_with_their_defaults() -> None:
    parameters = list(inspect.signature(RequestFacts).parameters.values())
    assert [(p.name, p.default) for p in parameters] == [
        (f.name, inspect.Parameter.empty if f.default is MISSING else f.default)
        for f in fields(RequestFacts)
    ]
    facts = RequestFacts("GET", "https", "shop.example", "/a", "q=1", {"cookie": "a=1"}, "10.0.0.1")
    assert [getattr(facts, f.name) for f in fields(facts)] == [
        "GET", "https", "shop.example", "/a", "q=1", {"cookie": "a=1"}, "10.0.0.1"
    ]  # fmt: skip
    assert facts == replace(facts)
    assert facts != replace(facts, path="/b")
    assert facts.cookies == {"a": "1"}
    with pytest.raises(FrozenInstanceError):
        facts.path = "/b"  # type: ignore[misc]

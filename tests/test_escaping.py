"""Tests for pixelmirror.escaping: JSON safe inside an inline script."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType

import pytest

from pixelmirror.escaping import safe_json


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("</script>", '"\\u003c/script\\u003e"', id="script-close"),
        pytest.param("<!--", '"\\u003c!--"', id="comment-open"),
        pytest.param("-->", '"--\\u003e"', id="comment-close"),
        pytest.param("a&b", '"a\\u0026b"', id="ampersand"),
        pytest.param("\u2028\u2029", '"\\u2028\\u2029"', id="line-separators"),
        pytest.param("café ✓ 😀", '"caf\\u00e9 \\u2713 \\ud83d\\ude00"', id="unicode"),
        pytest.param(
            {"b": 1, "a": [True, None, 1.5]}, '{"b":1,"a":[true,null,1.5]}', id="order-kept"
        ),
        pytest.param(Decimal("49.99"), "49.99", id="decimal"),
        pytest.param({"z", "a"}, '["a","z"]', id="set-sorted"),
        pytest.param(("x", 1), '["x",1]', id="tuple"),
        pytest.param(MappingProxyType({"k": "v"}), '{"k":"v"}', id="mapping"),
        pytest.param('"\\', '"\\"\\\\"', id="quote-backslash"),
    ],
)
def test_safe_json(value: object, expected: str) -> None:
    out = safe_json(value)
    assert out == expected
    assert out.isascii()
    assert json.loads(out) == json.loads(json.dumps(value, default=_plain))


def _plain(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param({"v": -float("inf")}, id="nested-inf"),
        pytest.param(Decimal("NaN"), id="decimal-nan"),
        pytest.param(object(), id="object"),
        pytest.param({"when": b"bytes"}, id="bytes"),
    ],
)
def test_safe_json_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="browser data"):
        safe_json(value)

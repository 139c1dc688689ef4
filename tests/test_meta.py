from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pixelmirror import meta

PACKAGE = Path(meta.__file__).parent

# Numbers that only Meta's rules give a meaning: its error codes and subcodes, its age limits.
META_NUMBERS = frozenset(
    {
        190,
        341,
        613,
        2635,
        80000,
        80015,
        2_804_000,
        2_805_000,
        meta.MAX_EVENT_AGE,
        meta.MAX_PHYSICAL_STORE_AGE,
    }
)


def test_standard_events() -> None:
    assert len(meta.STANDARD_EVENTS) == 18
    assert {"PageView", "Purchase", "ViewContent", "SubmitApplication"} <= meta.STANDARD_EVENTS


@pytest.mark.parametrize(
    ("action_source", "days"), [("website", 7), ("app", 7), ("physical_store", 62)]
)
def test_max_age_gives_store_events_62_days_and_others_7(action_source: str, days: int) -> None:
    assert meta.max_age(action_source) == days * meta.DAY


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        pytest.param(400, {"code": 190}, meta.Fault.ACCESS, id="expired-token"),
        pytest.param(400, {"code": "200"}, meta.Fault.ACCESS, id="code-as-text"),
        pytest.param(400, {"code": 2635}, meta.Fault.REQUEST, id="retired-version"),
        pytest.param(400, {"code": 100, "error_subcode": 33}, meta.Fault.REQUEST, id="no-pixel"),
        pytest.param(400, {"code": 100}, meta.Fault.REQUEST, id="appsecret-proof"),
        pytest.param(400, {"code": 613}, meta.Fault.RETRY, id="throttled"),
        pytest.param(400, {"code": 1, "is_transient": True}, meta.Fault.RETRY, id="transient"),
        pytest.param(500, {"code": 100}, meta.Fault.RETRY, id="server-error"),
        pytest.param(403, {"code": 3}, meta.Fault.ACCESS, id="forbidden"),
        pytest.param(
            400, {"code": 100, "error_subcode": 2804003}, meta.Fault.EVENTS, id="event-subcode"
        ),
        pytest.param(
            400, {"code": 100, "message": "Invalid data[3]"}, meta.Fault.EVENTS, id="names-event"
        ),
    ],
)
def test_fault_sorts_an_answer_by_what_the_sender_must_do(
    status: int, error: dict[str, object], expected: meta.Fault
) -> None:
    assert meta.fault(status, error) is expected


@pytest.mark.parametrize("fault", list(meta.Fault))
@pytest.mark.parametrize(
    ("code", "subcode"), [(None, None), (190, None), (2635, None), (100, 33), (100, None)]
)
def test_every_answer_gets_advice(fault: meta.Fault, code: int | None, subcode: int | None) -> None:
    assert meta.advice(fault, code, subcode, "message").strip()


def test_advice_names_the_setting_to_fix() -> None:
    assert "PIXELMIRROR_API_VERSION" in meta.advice(meta.Fault.REQUEST, 2635, None, "")
    assert "PIXELMIRROR_PIXEL_ID" in meta.advice(meta.Fault.REQUEST, 100, 33, "")
    assert "PIXELMIRROR_APP_SECRET" in meta.advice(meta.Fault.REQUEST, 100, None, "appsecret_proof")


def production_modules() -> list[Path]:
    testing = PACKAGE / "testing"
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != Path(meta.__file__) and testing not in path.parents
    ]


@pytest.mark.parametrize("path", production_modules(), ids=lambda path: path.name)
def test_no_module_but_meta_repeats_metas_numbers(path: Path) -> None:
    numbers = {
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and type(node.value) is int
    }
    assert not numbers & META_NUMBERS


def test_the_fake_graph_api_keeps_its_own_copy_of_the_rules() -> None:
    imported = {
        (node.module, alias.name)
        for path in (PACKAGE / "testing").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert not {(module, name) for module, name in imported if module == "pixelmirror.meta"}
    assert ("pixelmirror", "meta") not in imported

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pixelmirror import meta
from pixelmirror.meta import HASHED_KEYS, USER_DATA_KEYS, WIRE_KEYS, identifies_user
from pixelmirror.normalize import normalize_user_data

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


# --------------------------------------------------------------------------------------------
# user_data keys


def test_user_data_keys_cover_every_wire_key() -> None:
    assert set(USER_DATA_KEYS.values()) == set(WIRE_KEYS)
    for wire in WIRE_KEYS:
        assert USER_DATA_KEYS[wire] == wire
    long_names = {
        "email": "em",
        "phone": "ph",
        "first_name": "fn",
        "last_name": "ln",
        "date_of_birth": "db",
        "gender": "ge",
        "city": "ct",
        "state": "st",
        "zip_code": "zp",
        "country_code": "country",
    }
    for name, wire in long_names.items():
        assert USER_DATA_KEYS[name] == wire
    assert {
        "em",
        "ph",
        "fn",
        "ln",
        "db",
        "ge",
        "ct",
        "st",
        "zp",
        "country",
        "external_id",
    } == HASHED_KEYS


# --------------------------------------------------------------------------------------------
# identifies_user: Meta's insufficient sets

_WEAK_SETS = [
    pytest.param({"ct", "country", "st", "zp", "ge", "client_user_agent"}, id="location-set"),
    pytest.param({"db", "client_user_agent"}, id="db-ua-set"),
    pytest.param({"fn", "ge"}, id="fn-ge-set"),
    pytest.param({"ln", "ge"}, id="ln-ge-set"),
]


@pytest.mark.parametrize("keys", _WEAK_SETS)
def test_identifies_user_rejects_each_insufficient_set_exactly(keys: set[str]) -> None:
    assert not identifies_user(keys)


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param({"ct", "zp"}, id="location-subset"),
        pytest.param({"client_user_agent"}, id="ua-alone"),
        pytest.param({"db"}, id="db-alone"),
        pytest.param({"fn"}, id="fn-alone"),
        pytest.param({"ge"}, id="ge-alone"),
    ],
)
def test_identifies_user_rejects_subsets(keys: set[str]) -> None:
    assert not identifies_user(keys)


@pytest.mark.parametrize(
    "user_data",
    [
        pytest.param(
            {
                "city": "Menlo Park",
                "country": "US",
                "state": "CA",
                "zip_code": "94025",
                "gender": "f",
                "client_user_agent": "UA",
                "email": "mary@example.com",
            },
            id="location-set-plus-em",
        ),
        pytest.param(
            {"date_of_birth": "1990-01-01", "client_user_agent": "UA", "em": "m@example.com"},
            id="db-ua-set-plus-em",
        ),
        pytest.param({"fn": "Mary", "ge": "f", "em": "mary@example.com"}, id="fn-ge-plus-em"),
        pytest.param({"ln": "Smith", "ge": "f", "email": "mary@example.com"}, id="ln-ge-plus-em"),
    ],
)
def test_identifies_user_accepts_superset_with_valid_email(user_data: dict[str, object]) -> None:
    wire = normalize_user_data(user_data)
    assert "em" in wire
    assert identifies_user(wire)


def test_identifies_user_invalid_email_does_not_rescue_a_weak_set() -> None:
    wire = normalize_user_data({"fn": "Mary", "ge": "f", "em": "not-an-email"})
    assert "em" not in wire
    assert not identifies_user(wire)


def test_identifies_user_rejects_empty() -> None:
    assert not identifies_user(set())
    assert not identifies_user(normalize_user_data({}))


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param({"em"}, id="em"),
        pytest.param({"ph"}, id="ph"),
        pytest.param({"external_id"}, id="external_id"),
        pytest.param({"fbp", "client_user_agent"}, id="fbp-ua"),
        pytest.param({"fn", "ln"}, id="fn-ln"),
        pytest.param({"client_ip_address", "client_user_agent"}, id="ip-ua"),
    ],
)
def test_identifies_user_accepts_identifying_keys(keys: set[str]) -> None:
    assert identifies_user(keys)


# --------------------------------------------------------------------------------------------
# Error answers


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

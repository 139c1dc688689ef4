from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from identitykit import NOW, make, request
from pixelmirror.facts import RequestFacts

# --------------------------------------------------------------------------------------------
# Consent


def _refuse(facts: RequestFacts) -> bool:
    return False


def _grant(facts: RequestFacts) -> bool:
    return True


def _fail(facts: RequestFacts) -> bool:
    raise RuntimeError("consent service down")


@pytest.mark.parametrize(
    ("setting", "callback", "consent_cookie", "granted"),
    [
        pytest.param(None, None, None, True, id="no-gating"),
        pytest.param(None, _grant, None, True, id="callable-true"),
        pytest.param(None, _refuse, None, False, id="callable-false"),
        pytest.param("consent", _grant, None, True, id="callable-overrides-cookie"),
        pytest.param("consent", _refuse, "yes", False, id="callable-overrides-cookie-yes"),
        pytest.param("consent", None, None, False, id="name-missing"),
        pytest.param("consent", None, "1", True, id="name-1"),
        pytest.param("consent", None, "yes", True, id="name-yes"),
        pytest.param("consent", None, "analytics", True, id="name-any-value"),
        pytest.param("consent", None, "", False, id="name-empty"),
        pytest.param("consent", None, "0", False, id="name-0"),
        pytest.param("consent", None, "false", False, id="name-false"),
        pytest.param("consent", None, "No", False, id="name-No"),
        pytest.param("consent", None, "deny", False, id="name-deny"),
        pytest.param("consent", None, "DENIED", False, id="name-DENIED"),
        pytest.param("consent=marketing", None, "marketing", True, id="value-exact"),
        pytest.param("consent=marketing", None, "analytics,marketing", True, id="value-in-list"),
        pytest.param("consent=marketing", None, "analytics", False, id="value-other"),
        pytest.param("consent=marketing", None, "Marketing", False, id="value-case"),
        pytest.param("consent=marketing", None, "marketing-off", False, id="value-prefix"),
        pytest.param("consent=marketing", None, None, False, id="value-missing"),
    ],
)
def test_consent(
    setting: str | None,
    callback: Callable[[RequestFacts], bool] | None,
    consent_cookie: str | None,
    granted: bool,
) -> None:
    identity = make(consent=callback, consent_cookie=setting)
    cookies = {"consent": consent_cookie} if consent_cookie is not None else None
    visitor = identity.resolve(request(cookies=cookies), now=NOW)
    assert (visitor is not None) is granted
    # Only a gate that asks nothing is skipped.
    assert identity._consent.asks is (setting is not None or callback is not None)


def test_a_failing_consent_callable_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    identity = make(consent=_fail)
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        assert identity.resolve(request(), now=NOW) is None
    assert "consent callable failed" in caplog.text


@pytest.mark.parametrize(
    ("setting", "callback"),
    [
        pytest.param(None, None, id="no-gating"),
        pytest.param(None, _grant, id="callable-true"),
        pytest.param("consent", None, id="cookie-yes"),
    ],
)
@pytest.mark.parametrize(
    ("honor", "gpc", "granted"),
    [
        pytest.param(True, "1", False, id="honoured-1"),
        pytest.param(True, " 1 ", False, id="honoured-spaces"),
        pytest.param(True, "0", True, id="honoured-0"),
        pytest.param(True, None, True, id="honoured-absent"),
        pytest.param(False, "1", True, id="ignored"),
    ],
)
def test_global_privacy_control_refuses_whatever_else_consents(
    setting: str | None,
    callback: Callable[[RequestFacts], bool] | None,
    honor: bool,
    gpc: str | None,
    granted: bool,
) -> None:
    identity = make(consent=callback, consent_cookie=setting, honor_gpc=honor)
    headers = {"sec-gpc": gpc} if gpc is not None else None
    visitor = identity.resolve(request(cookies={"consent": "yes"}, headers=headers), now=NOW)
    assert (visitor is not None) is granted

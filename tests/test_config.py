from __future__ import annotations

import ipaddress
from dataclasses import fields
from pathlib import Path

import pytest

from pixelmirror.config import Config, ConfigError, env_name, masked_url
from pixelmirror.outbox import open_outbox

KEY = "k" * 32


def test_defaults_without_environment() -> None:
    config = Config.from_env({})
    assert config.pixel_id is None
    assert config.dry_run
    assert config.api_version == "v26.0"
    assert config.graph_url == "https://graph.facebook.com"
    assert config.outbox == "memory://"
    assert config.dispatch == "thread"
    assert config.batch_size == 1000


def test_every_variable_is_read() -> None:
    environ = {
        "PIXELMIRROR_PIXEL_ID": "1234567890",
        "PIXELMIRROR_ACCESS_TOKEN": "EAAtoken",
        "PIXELMIRROR_SECRET_KEY": f"{KEY}new, {KEY}old",
        "PIXELMIRROR_TEST_EVENT_CODE": "TEST123",
        "PIXELMIRROR_PARTNER_AGENT": "acmeshop",
        "PIXELMIRROR_API_VERSION": "v25.0",
        "PIXELMIRROR_GRAPH_URL": "http://127.0.0.1:9/",
        "PIXELMIRROR_APP_SECRET": "appsecret",
        "PIXELMIRROR_OUTBOX": "sqlite:///tmp/x.db",
        "PIXELMIRROR_DISPATCH": "external",
        "PIXELMIRROR_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
        "PIXELMIRROR_CONSENT_COOKIE": "consent=yes",
        "PIXELMIRROR_BATCH_SIZE": "500",
        "PIXELMIRROR_FLUSH_INTERVAL": "0.5",
        "PIXELMIRROR_QUEUE_SIZE": "10",
        "PIXELMIRROR_HANDOFF_SIZE": "20",
        "PIXELMIRROR_HANDOFF_LINGER": "0.01",
        "PIXELMIRROR_REQUEST_TIMEOUT": "3",
        "PIXELMIRROR_LEASE": "12",
        "PIXELMIRROR_RETRY_BACKOFF": "0.1",
        "PIXELMIRROR_RETRY_BACKOFF_MAX": "30",
        "PIXELMIRROR_SHUTDOWN_TIMEOUT": "2",
    }
    config = Config.from_env(environ)
    assert config.pixel_id == "1234567890"
    assert config.access_token == "EAAtoken"
    assert config.secret_key == (f"{KEY}new", f"{KEY}old")
    assert config.test_event_code == "TEST123"
    assert config.partner_agent == "acmeshop"
    assert config.api_version == "v25.0"
    assert config.graph_url == "http://127.0.0.1:9"
    assert config.app_secret == "appsecret"
    assert config.outbox == "sqlite:///tmp/x.db"
    assert config.dispatch == "external"
    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1"),
    )
    assert config.consent_cookie == "consent=yes"
    assert (config.batch_size, config.queue_size) == (500, 10)
    assert (config.handoff_size, config.handoff_linger) == (20, 0.01)
    assert (config.flush_interval, config.request_timeout) == (0.5, 3.0)
    assert config.lease == 12.0
    assert (config.retry_backoff, config.retry_backoff_max, config.shutdown_timeout) == (
        0.1,
        30.0,
        2.0,
    )
    assert not config.dry_run


def test_keywords_override_environment() -> None:
    config = Config.from_env(
        {"PIXELMIRROR_PIXEL_ID": "111", "PIXELMIRROR_BATCH_SIZE": "5"},
        pixel_id="222",
        secret_key=f"{KEY}a,{KEY}b",
        trusted_proxies=["192.168.0.1"],
    )
    assert config.pixel_id == "222"
    assert config.batch_size == 5
    assert config.secret_key == (f"{KEY}a", f"{KEY}b")
    assert config.trusted_proxies == (ipaddress.ip_network("192.168.0.1/32"),)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        pytest.param(
            "PIXEL_ID", "abc", "PIXELMIRROR_PIXEL_ID must be digits, got 'abc'", id="pixel-id"
        ),
        pytest.param(
            "API_VERSION",
            "26",
            "PIXELMIRROR_API_VERSION must be a Graph API version",
            id="api-version",
        ),
        pytest.param(
            "GRAPH_URL",
            "graph.facebook.com",
            "PIXELMIRROR_GRAPH_URL must be an http(s) URL",
            id="graph-url",
        ),
        pytest.param("OUTBOX", "postgres://x", "PIXELMIRROR_OUTBOX must be memory://", id="outbox"),
        pytest.param(
            "DISPATCH", "process", "PIXELMIRROR_DISPATCH must be thread or external", id="dispatch"
        ),
        pytest.param(
            "BATCH_SIZE",
            "1001",
            "PIXELMIRROR_BATCH_SIZE must be between 1 and 1000",
            id="batch-too-big",
        ),
        pytest.param(
            "BATCH_SIZE",
            "ten",
            "PIXELMIRROR_BATCH_SIZE must be an integer, got 'ten'",
            id="batch-not-int",
        ),
        pytest.param(
            "QUEUE_SIZE", "0", "PIXELMIRROR_QUEUE_SIZE must be a positive integer", id="queue-size"
        ),
        pytest.param(
            "HANDOFF_SIZE",
            "0",
            "PIXELMIRROR_HANDOFF_SIZE must be a positive integer",
            id="handoff-size",
        ),
        pytest.param(
            "HANDOFF_LINGER",
            "-0.001",
            "PIXELMIRROR_HANDOFF_LINGER must be between 0 and 1 second",
            id="linger-negative",
        ),
        pytest.param(
            "HANDOFF_LINGER",
            "5",
            "PIXELMIRROR_HANDOFF_LINGER must be between 0 and 1 second",
            id="linger-long",
        ),
        pytest.param(
            "FLUSH_INTERVAL",
            "soon",
            "PIXELMIRROR_FLUSH_INTERVAL must be a number",
            id="interval-text",
        ),
        pytest.param(
            "REQUEST_TIMEOUT",
            "0",
            "PIXELMIRROR_REQUEST_TIMEOUT must be a positive number",
            id="timeout-zero",
        ),
        pytest.param(
            "LEASE", "-1", "PIXELMIRROR_LEASE must be a positive number", id="lease-negative"
        ),
        pytest.param(
            "TRUSTED_PROXIES", "10.0.0.0/33", "PIXELMIRROR_TRUSTED_PROXIES must be", id="proxies"
        ),
        pytest.param(
            "PARTNER_AGENT", "x" * 23, "PIXELMIRROR_PARTNER_AGENT must be under 23", id="agent-long"
        ),
        pytest.param(
            "PARTNER_AGENT",
            "a1",
            "PIXELMIRROR_PARTNER_AGENT must be under 23",
            id="agent-one-letter",
        ),
        pytest.param(
            "SECRET_KEY",
            "short",
            "PIXELMIRROR_SECRET_KEY must be keys of at least 16",
            id="key-short",
        ),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config.from_env({f"PIXELMIRROR_{variable}": value})


def test_secrets_stay_out_of_repr_and_errors() -> None:
    config = Config.from_env(
        {}, access_token="EAAsecret", secret_key=KEY, app_secret="appsecret123"
    )
    text = repr(config)
    assert "EAAsecret" not in text
    assert KEY not in text
    assert "appsecret123" not in text
    with pytest.raises(ConfigError) as caught:
        Config.from_env({}, secret_key="tooshortsecret")
    assert "tooshortsecret" not in str(caught.value)


PASSWORD = "hunter2-redis-pass"

OUTBOX_URLS = [
    f"redis://:{PASSWORD}@redis.internal:6379/0",
    f"redis://worker:{PASSWORD}@redis.internal:6379/0?consumer=w1",
    f"rediss://default:{PASSWORD}@redis.internal/0",
    f"redis://:{PASSWORD}@[::1]:6379/0",
    f"redis://:{PASSWORD}@redis.internal:notaport/0",  # urlsplit would raise on its port
    f"redis://:{PASSWORD}@",
]


@pytest.mark.parametrize("url", OUTBOX_URLS)
def test_the_outbox_password_stays_out_of_repr(url: str) -> None:
    text = repr(Config.from_env({}, outbox=url))
    assert PASSWORD not in text
    assert ":***@" in text


@pytest.mark.parametrize(
    "url",
    [
        *OUTBOX_URLS,
        f"redis//:{PASSWORD}@redis.internal/0",
        f"redis:{PASSWORD}@redis.internal/0",
        f"sqlite://:{PASSWORD}@host/x.db",
        f"postgres://app:{PASSWORD}@db.internal/x?sslmode=require#frag",
    ],
)
def test_masked_url_hides_the_password_of_any_url(url: str) -> None:
    masked = masked_url(url)
    assert PASSWORD not in masked
    assert "***" in masked
    # Everything but the password is kept, so the URL still says where it points.
    assert masked == url.replace(PASSWORD, "***")


@pytest.mark.parametrize("url", ["memory://", "sqlite:///var/x.db", "redis://host:6379/0"])
def test_masked_url_keeps_urls_without_a_password(url: str) -> None:
    assert masked_url(url) == url


@pytest.mark.parametrize(
    "url", [f"redis//:{PASSWORD}@redis.internal/0", f"ftp://:{PASSWORD}@redis.internal/0"]
)
def test_a_bad_outbox_url_is_reported_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({}, outbox=url)
    assert PASSWORD not in str(caught.value)
    with pytest.raises(ValueError, match="PIXELMIRROR_OUTBOX must be") as raised:
        open_outbox(url)
    assert PASSWORD not in str(raised.value)
    assert "***" in str(raised.value)


def test_unknown_keyword_is_an_error() -> None:
    with pytest.raises(TypeError, match="unknown pixelmirror settings: pixelid"):
        Config.from_env({}, pixelid="1")


def test_the_readme_documents_every_setting_with_its_default() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[-2].strip()
        for line in readme.splitlines()
        if line.startswith("| `PIXELMIRROR_")
    }
    for setting in fields(Config):
        name = env_name(setting.name)
        assert name in rows, f"{name} is missing from README's configuration table"
        default = setting.default
        if isinstance(default, bool):
            assert f"`{str(default).lower()}`" in rows[name], name
        elif isinstance(default, (int, float, str)):
            text = f"{default:g}" if isinstance(default, float) else str(default)
            assert f"`{text}" in rows[name], name


@pytest.mark.parametrize(
    "domain",
    [
        "com",
        "co.uk",
        "com.pl",
        "org.il",
        "tokyo.jp",
        "com.es",
        "github.io",
        "s3.amazonaws.com",
        "herokuapp.com",
        "xn--ciqpn.hk",  # an IDN second level, in punycode
        ".CO.UK",
        "co.uk.",
    ],
)
def test_a_public_suffix_as_cookie_domain_is_refused_naming_the_variable(domain: str) -> None:
    with pytest.raises(ConfigError, match="PIXELMIRROR_COOKIE_DOMAIN must be a registrable domain"):
        Config.from_env({"PIXELMIRROR_COOKIE_DOMAIN": domain})
    with pytest.raises(ConfigError, match="PIXELMIRROR_COOKIE_DOMAIN"):
        Config(cookie_domain=domain)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("example.com", "example.com"),
        (".Example.COM", "example.com"),
        ("example.co.uk.", "example.co.uk"),
        ("shop.example.com.pl", "shop.example.com.pl"),
        ("app.github.io", "app.github.io"),
    ],
)
def test_a_registrable_cookie_domain_is_kept_in_canonical_form(given: str, kept: str) -> None:
    assert Config.from_env({"PIXELMIRROR_COOKIE_DOMAIN": given}).cookie_domain == kept


def test_a_malformed_cookie_domain_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="PIXELMIRROR_COOKIE_DOMAIN must be a domain name"):
        Config(cookie_domain="example.com; Secure")


@pytest.mark.parametrize(("given", "kept"), [("GB", "gb"), (" us ", "us"), ("de", "de")])
def test_the_default_country_is_kept_as_a_lowercase_alpha2_code(given: str, kept: str) -> None:
    assert Config.from_env({"PIXELMIRROR_DEFAULT_COUNTRY": given}).default_country == kept
    assert Config.from_env({}, default_country=given).default_country == kept


@pytest.mark.parametrize("given", ["xx", "gbr", "United Kingdom"])
def test_a_default_country_that_is_no_alpha2_code_is_refused_naming_the_variable(
    given: str,
) -> None:
    with pytest.raises(ConfigError, match="PIXELMIRROR_DEFAULT_COUNTRY must be an ISO 3166-1"):
        Config.from_env({"PIXELMIRROR_DEFAULT_COUNTRY": given})

"""Tests for pixelmirror.normalize: Meta's user_data normalisation and hashing."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import random
import re
import string
import sys
from collections.abc import Iterator
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identitykit import visitor_wire
from pixelmirror import _geo
from pixelmirror.meta import HASHED_KEYS, USER_DATA_KEYS, WIRE_KEYS
from pixelmirror.normalize import (
    normalize_user_data,
    own_visitor_wire,
    sha256_hex,
    wire_user_data,
)
from pixelmirror.phones import _EXTENSION
from pixelmirror.user_fields import _ASCII_NOT_ALNUM, _ASCII_NOT_ALNUM_SPACE, _ZIP_JUNK


def h(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def one(key: str, value: object, **extra: object) -> object:
    """The wire value that ``normalize_user_data`` makes of ``{key: value, **extra}``."""
    wire = normalize_user_data({key: value, **extra})
    return wire.get(USER_DATA_KEYS[key])


# --------------------------------------------------------------------------------------------
# sha256_hex and Meta's worked examples


def test_sha256_hex_is_lowercase_hex_of_utf8() -> None:
    assert sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex("valéry") == h("valéry")
    assert sha256_hex("X") == sha256_hex("X").lower()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        pytest.param(
            "em",
            "John_Smith@gmail.com",
            "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
            id="em-John_Smith",
        ),
        pytest.param(
            "ph",
            "+1 (650) 555-1212",
            "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
            id="ph-us-number",
        ),
        pytest.param(
            "fn",
            "Mary",
            "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec",
            id="fn-Mary",
        ),
        pytest.param(
            "fn",
            "정",
            "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14",
            id="fn-korean",
        ),
        pytest.param(
            "fn",
            "Valéry",
            "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c",
            id="fn-Valery-accent",
        ),
        pytest.param(
            "ge",
            "f",
            "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111",
            id="ge-f",
        ),
        pytest.param(
            "country",
            "US",
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621",
            id="country-US",
        ),
    ],
)
def test_worked_hashes_from_meta_docs(key: str, value: str, expected: str) -> None:
    assert normalize_user_data({key: value}) == {key: expected}


def test_worked_examples_together() -> None:
    wire = normalize_user_data(
        {
            "email": "John_Smith@gmail.com",
            "phone": "+1 (650) 555-1212",
            "first_name": "Mary",
            "gender": "f",
            "country": "US",
            "date_of_birth": "2/16/1997",
            "city": "San Francisco",
            "state": "CA",
            "zip_code": "94025-1234",
        }
    )
    assert wire == {
        "em": "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
        "ph": "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
        "fn": "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec",
        "db": h("19970216"),
        "ge": "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111",
        "ct": h("sanfrancisco"),
        "st": h("ca"),
        "zp": h("94025"),
        "country": "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621",
    }


# --------------------------------------------------------------------------------------------
# Rule tables, one per hashed key: (input key, raw value, normalised text before hashing)

EMAIL_RULES = [
    pytest.param("email", "John_Smith@gmail.com", "john_smith@gmail.com", id="long-name"),
    pytest.param("em", "  Person@Example.COM\t", "person@example.com", id="trim-lower"),
    pytest.param(
        "em", "a.b+tag@sub.example.co.uk", "a.b+tag@sub.example.co.uk", id="plus-subdomain"
    ),
    pytest.param("em", "ÉLODIE@exemple.fr", "élodie@exemple.fr", id="unicode-local"),
]

PHONE_RULES = [
    pytest.param("phone", "+1 (650) 555-1212", "16505551212", id="us-formatted"),
    pytest.param("ph", "1.650.555.1212", "16505551212", id="dots"),
    pytest.param("ph", "001 650 555 1212", "16505551212", id="double-zero-prefix"),
    pytest.param("ph", "+44 844 412 4653", "448444124653", id="uk"),
    pytest.param("ph", "tel: +49 30-1234567", "49301234567", id="letters-and-symbols"),
    pytest.param("ph", "+44 (0)20 7946 0000", "442079460000", id="bracketed-trunk-zero"),
    pytest.param("ph", "+49(0)30 1234567", "49301234567", id="bracketed-trunk-zero-tight"),
    pytest.param("ph", 16505551212, "16505551212", id="int"),
    pytest.param(
        "ph",
        "+\u0669\u0667\u0661 \u0665\u0660 \u0661\u0662\u0663 \u0664\u0665\u0666\u0667",
        "971501234567",
        id="arabic-indic-digits",
    ),
    pytest.param("ph", "1234567", "1234567", id="seven-digits-min"),
    pytest.param("ph", "123456789012345", "123456789012345", id="fifteen-digits-max"),
]

NAME_RULES = [
    pytest.param("first_name", "Mary", "mary", id="fn-long-name"),
    pytest.param("fn", "  MARY  ", "mary", id="fn-trim-lower"),
    pytest.param("ln", "O'Brien", "obrien", id="ln-apostrophe"),
    pytest.param("last_name", "Smith-Jones", "smithjones", id="ln-hyphen"),
    pytest.param("fn", "Mary  Ann", "mary ann", id="fn-inner-space-collapsed"),
    pytest.param("fn", "Mary - Ann", "mary ann", id="fn-spaced-dash"),
    pytest.param("fn", "José.", "josé", id="fn-accent-kept"),
    pytest.param("fn", "Vale\u0301ry", "valéry", id="fn-decomposed-accent-nfc"),
    pytest.param("ln", "Müller", "müller", id="ln-umlaut"),
    pytest.param("ln", "Ιωάννου", "ιωάννου", id="ln-greek"),
    pytest.param("fn", "गीता", "गीता", id="fn-devanagari-marks-kept"),
    pytest.param("fn", "Mary_Ann!", "maryann", id="fn-underscore-bang"),
]

GENDER_RULES = [
    pytest.param("gender", "f", "f", id="f"),
    pytest.param("ge", "F", "f", id="F"),
    pytest.param("ge", " Female ", "f", id="female"),
    pytest.param("ge", "WOMAN", "f", id="woman"),
    pytest.param("ge", "m", "m", id="m"),
    pytest.param("ge", "Male", "m", id="male"),
    pytest.param("ge", "man", "m", id="man"),
    pytest.param("ge", "M.", "m", id="M-dot"),
]

DOB_RULES = [
    pytest.param("date_of_birth", "2/16/1997", "19970216", id="us-worked-example"),
    pytest.param("db", "02/16/1997", "19970216", id="us-padded"),
    pytest.param("db", "02-16-1997", "19970216", id="us-dashes"),
    pytest.param("db", "03/04/1997", "19970304", id="ambiguous-reads-us"),
    pytest.param("db", "16/02/1997", "19970216", id="day-over-12-reads-dmy"),
    pytest.param("db", "16.02.1997", "19970216", id="european-dots"),
    pytest.param("db", "3.4.1997", "19970403", id="european-dots-short"),
    pytest.param("db", "19970216", "19970216", id="compact"),
    pytest.param("db", "1997-02-16", "19970216", id="iso"),
    pytest.param("db", "1997/2/16", "19970216", id="year-first-slashes"),
    pytest.param("db", " 1997.02.16 ", "19970216", id="year-first-dots-trimmed"),
    pytest.param("db", dt.date(1997, 2, 16), "19970216", id="date"),
    pytest.param("db", dt.datetime(1997, 2, 16, 13, 30), "19970216", id="datetime"),
    pytest.param("db", 19970216, "19970216", id="int"),
    pytest.param("db", "1900-01-01", "19000101", id="earliest"),
    pytest.param("db", "2/29/2000", "20000229", id="leap-day"),
]

CITY_RULES = [
    pytest.param("city", "San Francisco", "sanfrancisco", id="worked-example"),
    pytest.param("ct", "St. Louis", "stlouis", id="punctuation"),
    pytest.param("ct", "Winston-Salem", "winstonsalem", id="hyphen"),
    pytest.param("ct", "São Paulo", "sãopaulo", id="accent-kept"),
    pytest.param("ct", "  NEW   york ", "newyork", id="spaces"),
    pytest.param("ct", "東京", "東京", id="cjk"),
]

STATE_RULES = [
    pytest.param("state", "CA", {}, "ca", id="code-upper"),
    pytest.param("st", "California", {}, "ca", id="us-name"),
    pytest.param("st", " new york ", {}, "ny", id="us-name-spaces"),
    pytest.param("st", "District of Columbia", {}, "dc", id="dc"),
    pytest.param("st", "Washington D.C.", {}, "dc", id="washington-dc"),
    pytest.param("st", "Washington", {}, "wa", id="washington-state"),
    pytest.param("st", "Puerto Rico", {}, "pr", id="territory"),
    pytest.param("st", "California", {"country": "US"}, "ca", id="us-name-country-us"),
    pytest.param("st", "Georgia", {}, "ga", id="georgia-no-country"),
    pytest.param("st", "Georgia", {"country": "GE"}, "georgia", id="georgia-country-ge"),
    pytest.param("st", "Île-de-France", {"country": "FR"}, "îledefrance", id="non-us-name"),
    pytest.param("st", "Ontario", {"country": "ca"}, "ontario", id="canada-name"),
    pytest.param("st", "ON", {"country": "ca"}, "on", id="canada-code"),
]

ZIP_RULES = [
    pytest.param("zip_code", "94025-1234", {}, "94025", id="zip4-no-country"),
    pytest.param("zp", "940251234", {}, "94025", id="zip4-compact-no-country"),
    pytest.param("zp", " 94025 ", {}, "94025", id="zip5-trimmed"),
    pytest.param("zp", "94025-1234", {"country": "us"}, "94025", id="zip4-us"),
    pytest.param("zp", "94025 1234", {"country": "USA"}, "94025", id="zip4-space-us"),
    pytest.param("zp", "94025", {"country": h("us")}, "94025", id="zip5-hashed-us"),
    pytest.param("zp", "SW1A 1AA", {"country": "GB"}, "sw1a1aa", id="uk-postcode"),
    pytest.param("zp", "SW1A 1AA", {}, "sw1a1aa", id="uk-postcode-no-country"),
    pytest.param("zp", "01310-100", {"country": "br"}, "01310100", id="brazil-cep"),
    pytest.param("zp", "12345-6789", {"country": "ca"}, "123456789", id="non-us-nine-digits-kept"),
    pytest.param("zp", "K1A 0B1", {"country": "ca"}, "k1a0b1", id="canada"),
]

COUNTRY_RULES = [
    pytest.param("country", "US", "us", id="alpha2-upper"),
    pytest.param("country_code", "us", "us", id="country_code-alias"),
    pytest.param("country", "USA", "us", id="alpha3"),
    pytest.param("country", "U.S.A.", "us", id="alpha3-dots"),
    pytest.param("country", "United States", "us", id="name"),
    pytest.param("country", "united states of america", "us", id="official-name"),
    pytest.param("country", "United Kingdom", "gb", id="uk-name"),
    pytest.param("country", "UK", "gb", id="uk-alias"),
    pytest.param("country", "GBR", "gb", id="gbr"),
    pytest.param("country", "Deutschland", "de", id="deutschland"),
    pytest.param("country", "Germany", "de", id="germany"),
    pytest.param("country", "The Netherlands", "nl", id="the-prefix"),
    pytest.param("country", "Cote d'Ivoire", "ci", id="accent-folded"),
    pytest.param("country", "Côte d\u2019Ivoire", "ci", id="accent-curly-apostrophe"),
    pytest.param("country", "South Korea", "kr", id="common-name"),
    pytest.param("country", "Россия", "ru", id="native-cyrillic"),
    pytest.param("country", " fr ", "fr", id="trimmed"),
]

EXTERNAL_ID_RULES = [
    pytest.param("external_id", " User-123 ", "user-123", id="trim-lower"),
    pytest.param("external_id", 12345, "12345", id="int"),
    pytest.param(
        "external_id",
        "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
        "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
        id="md5-like-is-hashed",
    ),
]


@pytest.mark.parametrize(("key", "value", "normalised"), EMAIL_RULES)
def test_email(key: str, value: object, normalised: str) -> None:
    assert one(key, value) == h(normalised)


@pytest.mark.parametrize(("key", "value", "normalised"), PHONE_RULES)
def test_phone(key: str, value: object, normalised: str) -> None:
    assert one(key, value) == h(normalised)


@pytest.mark.parametrize(("key", "value", "normalised"), NAME_RULES)
def test_names(key: str, value: object, normalised: str) -> None:
    assert one(key, value) == h(normalised)


@pytest.mark.parametrize(("key", "value", "normalised"), GENDER_RULES)
def test_gender(key: str, value: object, normalised: str) -> None:
    assert one(key, value) == h(normalised)


@pytest.mark.parametrize(("key", "value", "normalised"), DOB_RULES)
def test_date_of_birth(key: str, value: object, normalised: str) -> None:
    assert one(key, value) == h(normalised)


@pytest.mark.parametrize(("key", "value", "normalised"), CITY_RULES)
def test_city(key: str, value: object, normalised: str) -> None:
    assert one(key, value) == h(normalised)


@pytest.mark.parametrize(("key", "value", "extra", "normalised"), STATE_RULES)
def test_state(key: str, value: object, extra: dict[str, object], normalised: str) -> None:
    assert one(key, value, **extra) == h(normalised)


@pytest.mark.parametrize(("key", "value", "extra", "normalised"), ZIP_RULES)
def test_zip(key: str, value: object, extra: dict[str, object], normalised: str) -> None:
    assert one(key, value, **extra) == h(normalised)


@pytest.mark.parametrize(("key", "value", "normalised"), COUNTRY_RULES)
def test_country(key: str, value: object, normalised: str) -> None:
    assert one(key, value) == h(normalised)


@pytest.mark.parametrize(("key", "value", "normalised"), EXTERNAL_ID_RULES)
def test_external_id(key: str, value: object, normalised: str) -> None:
    assert one(key, value) == h(normalised)


def test_every_iso_country_code_and_alpha3_is_known() -> None:
    for alpha2, alpha3, *_names in _geo.COUNTRIES:
        assert one("country", alpha2.upper()) == h(alpha2)
        assert one("country", alpha3.upper()) == h(alpha2)
    assert len(_geo.COUNTRIES) == 249


def test_every_us_state_name_maps_to_its_code() -> None:
    for code, name in _geo.US_STATES:
        assert one("st", name) == h(code)


# --------------------------------------------------------------------------------------------
# Values that are already SHA-256 hashes

HASH = "62A14E44F765419D10FEA99367361A727C12365E2520F32218D505ED9AA0F62F"


@pytest.mark.parametrize("key", sorted(HASHED_KEYS), ids=sorted(HASHED_KEYS))
def test_sha256_hex_passes_through_lowercased(key: str) -> None:
    assert normalize_user_data({key: HASH}) == {key: HASH.lower()}
    assert normalize_user_data({key: f"  {HASH.lower()} "}) == {key: HASH.lower()}


def test_sha256_in_a_list_passes_through() -> None:
    assert normalize_user_data({"em": [HASH, "john_smith@gmail.com"]}) == {"em": [HASH.lower()]}


# --------------------------------------------------------------------------------------------
# Multi-valued keys


@pytest.mark.parametrize(
    ("user_data", "expected"),
    [
        pytest.param(
            {"email": ["a@example.com", "b@example.com"]},
            {"em": [h("a@example.com"), h("b@example.com")]},
            id="list",
        ),
        pytest.param(
            {"em": ("b@example.com", "a@example.com")},
            {"em": [h("b@example.com"), h("a@example.com")]},
            id="tuple-order-kept",
        ),
        pytest.param(
            {"em": ["A@Example.com", "a@example.com ", "b@example.com"]},
            {"em": [h("a@example.com"), h("b@example.com")]},
            id="deduplicated-after-normalising",
        ),
        pytest.param(
            {"ph": ["+1 650 555 1212"]},
            {"ph": [h("16505551212")]},
            id="one-element-list-stays-a-list",
        ),
        pytest.param(
            {"em": "a@example.com"},
            {"em": h("a@example.com")},
            id="single-value-is-a-string",
        ),
        pytest.param(
            {"email": "a@example.com", "em": "b@example.com"},
            {"em": [h("a@example.com"), h("b@example.com")]},
            id="two-names-for-one-key-merge",
        ),
        pytest.param(
            {"em": [None, "a@example.com", None]},
            {"em": [h("a@example.com")]},
            id="none-items-skipped",
        ),
        pytest.param(
            {"country": ["US", "USA", "United States"]},
            {"country": [h("us")]},
            id="country-aliases-dedup",
        ),
        pytest.param(
            {"ge": ["female", "f", "F"], "fn": ["Mary", "Ann"]},
            {"fn": [h("mary"), h("ann")], "ge": [h("f")]},
            id="several-keys",
        ),
        pytest.param({"em": []}, {}, id="empty-list-absent"),
    ],
)
def test_multi_valued(user_data: dict[str, object], expected: dict[str, object]) -> None:
    assert normalize_user_data(user_data) == expected


def test_list_with_some_values_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        wire = normalize_user_data({"em": ["garbage-address", "a@example.com"]})
    assert wire == {"em": [h("a@example.com")]}
    assert "user_data['em'][0]" in caplog.text
    assert "garbage-address" not in caplog.text


def test_list_with_every_value_dropped_is_absent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pixelmirror"):
        wire = normalize_user_data({"em": ["garbage-one", "garbage-two"], "fbp": "fb.1.1.1"})
    assert wire == {"fbp": "fb.1.1.1"}
    assert len(caplog.records) == 2
    assert "garbage" not in caplog.text


# --------------------------------------------------------------------------------------------
# Dropped values: key absent, warning logged, raw value never in the log

FUTURE = (dt.date.today() + dt.timedelta(days=2)).strftime("%Y-%m-%d")

DROPPED = [
    pytest.param("email", "not-an-email-address", "email address", id="em-no-at"),
    pytest.param("em", "someone@localhost", "email address", id="em-no-tld"),
    pytest.param("em", "two@ats@example.com", "email address", id="em-two-ats"),
    pytest.param("em", "spaced out@example.com", "email address", id="em-space"),
    pytest.param("phone", "55-1212", "digits", id="ph-too-short"),
    pytest.param("ph", "+1 234 567 890 123 456 789", "digits", id="ph-too-long"),
    pytest.param("ph", "call-me-maybe", "digits", id="ph-no-digits"),
    pytest.param("ph", "000000000", "digits", id="ph-only-zeros"),
    pytest.param("fn", "!!!---", "punctuation", id="fn-only-punctuation"),
    pytest.param("ln", "...", "punctuation", id="ln-only-dots"),
    pytest.param("gender", "nonbinary-xyz", "gender", id="ge-unknown-word"),
    pytest.param("ge", "q", "gender", id="ge-unknown-letter"),
    pytest.param("db", "1899-12-31", "1900", id="db-before-1900"),
    pytest.param("db", FUTURE, "1900 and today", id="db-future"),
    pytest.param("db", "2/30/1997", "calendar", id="db-feb-30"),
    pytest.param("db", "13/13/1997", "calendar", id="db-month-13"),
    pytest.param("db", "1997-02-16T10:00:00", "format", id="db-iso-datetime"),
    pytest.param("db", "97-02-16", "format", id="db-two-digit-year"),
    pytest.param("db", "Feb 16 1997", "format", id="db-words"),
    pytest.param("db", "1997-02/16", "format", id="db-mixed-separators"),
    pytest.param("db", dt.date(1850, 5, 5), "1900", id="db-date-too-old"),
    pytest.param("ct", "--- ...", "punctuation", id="ct-only-punctuation"),
    pytest.param("st", "?!", "punctuation", id="st-only-punctuation"),
    pytest.param("zp", " - - ", "dashes", id="zp-only-dashes"),
    pytest.param("country", "Narnia", "country", id="country-unknown-name"),
    pytest.param("country", "XX", "country", id="country-unassigned-code"),
    pytest.param("country", "ZZZ", "country", id="country-unknown-alpha3"),
    pytest.param("client_ip_address", "999.1.2.3", "IP", id="ip-octet-out-of-range"),
    pytest.param("client_ip_address", "not.an.ip.addr", "IP", id="ip-garbage"),
    pytest.param("client_ip_address", "2001:db8::g", "IP", id="ipv6-bad-hex"),
]


@pytest.mark.parametrize(("key", "value", "reason"), DROPPED)
def test_unusable_value_is_dropped_with_warning(
    caplog: pytest.LogCaptureFixture, key: str, value: object, reason: str
) -> None:
    with caplog.at_level(logging.DEBUG, logger="pixelmirror"):
        wire = normalize_user_data({key: value, "fbp": "fb.1.1554763741205.1098115397"})
    assert USER_DATA_KEYS[key] not in wire
    assert wire == {"fbp": "fb.1.1554763741205.1098115397"}
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    record = caplog.records[0]
    assert record.name == "pixelmirror.normalize"
    message = record.getMessage()
    assert f"user_data[{key!r}]" in message
    assert reason in message
    assert str(value) not in caplog.text


# --------------------------------------------------------------------------------------------
# Skipped silently: None and empty values


def test_none_and_empty_values_skipped_silently(caplog: pytest.LogCaptureFixture) -> None:
    user_data: dict[str, object] = {
        "em": None,
        "ph": "",
        "fn": "   ",
        "ln": [],
        "db": (),
        "ct": [None, ""],
        "client_user_agent": "",
        "fbc": "  ",
        "lead_id": None,
    }
    with caplog.at_level(logging.DEBUG, logger="pixelmirror"):
        assert normalize_user_data(user_data) == {}
    assert caplog.records == []


def test_empty_mapping() -> None:
    assert normalize_user_data({}) == {}


# --------------------------------------------------------------------------------------------
# Programming errors: unknown key, wrong type


@pytest.mark.parametrize(
    "key",
    ["mail", "EMAIL", "zip", "ip", "user_agent", "phone_number", ""],
    ids=["mail", "EMAIL-upper", "zip", "ip", "user_agent", "phone_number", "empty"],
)
def test_unknown_key_raises(key: str) -> None:
    with pytest.raises(ValueError, match="unknown user_data key") as info:
        normalize_user_data({"em": "a@example.com", key: "x"})
    message = str(info.value)
    assert repr(key) in message
    for accepted in ("email", "em", "client_ip_address", "country_code", "fbc"):
        assert accepted in message


def test_non_string_key_raises() -> None:
    bad: dict[object, object] = {1: "x"}
    with pytest.raises(ValueError, match="unknown user_data key 1"):
        normalize_user_data(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("em", 123, id="em-int"),
        pytest.param("email", b"a@example.com", id="em-bytes"),
        pytest.param("em", {"a": 1}, id="em-dict"),
        pytest.param("em", ["a@example.com", ["nested@example.com"]], id="em-nested-list"),
        pytest.param("em", {"a@example.com"}, id="em-set"),
        pytest.param("ph", 1.5, id="ph-float"),
        pytest.param("fn", True, id="fn-bool"),
        pytest.param("ph", True, id="ph-bool"),
        pytest.param("zp", 94025, id="zp-int-loses-leading-zeros"),
        pytest.param("db", 1997.0, id="db-float"),
        pytest.param("ge", dt.date(2000, 1, 1), id="ge-date"),
        pytest.param("country", 840, id="country-int"),
        pytest.param("client_user_agent", ["Mozilla/5.0"], id="ua-list"),
        pytest.param("client_user_agent", 5, id="ua-int"),
        pytest.param("fbc", 1, id="fbc-int"),
        pytest.param("fbp", ["fb.1.1.1"], id="fbp-list"),
        pytest.param("client_ip_address", 3232235777, id="ip-int"),
        pytest.param("lead_id", 1.0, id="lead_id-float"),
        pytest.param("subscription_id", ["1"], id="subscription_id-list"),
    ],
)
def test_wrong_type_raises_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match="must be") as info:
        normalize_user_data({key: value})
    assert f"user_data[{key!r}]" in str(info.value)


def test_wrong_type_message_does_not_echo_the_value() -> None:
    with pytest.raises(ValueError, match="bytes") as info:
        normalize_user_data({"email": b"secret@example.com"})
    assert "secret" not in str(info.value)
    assert "bytes" in str(info.value)


# --------------------------------------------------------------------------------------------
# Keys sent in clear


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("fbc", "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz", id="fbc-case-kept"),
        pytest.param("fbc", "fb.1.1554763741205.IwAR2F4-dbP0l7Mn.Ab12Cd34", id="fbc-appendix"),
        pytest.param("fbp", "fb.1.1596403881668.1116446470", id="fbp"),
        pytest.param(
            "client_user_agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
            id="user-agent",
        ),
        pytest.param("subscription_id", "Sub-ABC-123", id="subscription_id"),
        pytest.param("fb_login_id", "1234567890", id="fb_login_id"),
        pytest.param("lead_id", 1234567890123456, id="lead_id-int"),
        pytest.param("lead_id", "1234567890123456", id="lead_id-str"),
        pytest.param("fbc", HASH, id="fbc-64-hex-not-lowercased"),
    ],
)
def test_never_hashed_kept_verbatim(key: str, value: object) -> None:
    assert normalize_user_data({key: value}) == {key: value}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            "2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1", id="ipv6-compressed"
        ),
        pytest.param("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1", id="ipv6-first-zero-run"),
        pytest.param("FE80::1%eth0", "fe80::1", id="ipv6-zone-dropped"),
        pytest.param("::ffff:203.0.113.7", "203.0.113.7", id="ipv4-mapped-unwrapped"),
        pytest.param(" 203.0.113.7 ", "203.0.113.7", id="ipv4-trimmed"),
        pytest.param("::1", "::1", id="ipv6-loopback"),
        pytest.param(ipaddress.ip_address("2001:db8::5"), "2001:db8::5", id="ipv6-object"),
        pytest.param(ipaddress.ip_address("198.51.100.1"), "198.51.100.1", id="ipv4-object"),
    ],
)
def test_client_ip_address(value: object, expected: str) -> None:
    assert normalize_user_data({"client_ip_address": value}) == {"client_ip_address": expected}


# --------------------------------------------------------------------------------------------
# Keys and output order


def test_output_follows_wire_key_order_whatever_the_input_order() -> None:
    user_data: dict[str, object] = {
        "lead_id": 1,
        "fb_login_id": "2",
        "subscription_id": "3",
        "fbp": "fb.1.1.1",
        "fbc": "fb.1.1.abc",
        "client_user_agent": "UA",
        "client_ip_address": "203.0.113.7",
        "external_id": "u1",
        "country": "us",
        "zip_code": "94025",
        "state": "ca",
        "city": "Menlo Park",
        "gender": "m",
        "date_of_birth": "1990-01-01",
        "last_name": "Smith",
        "first_name": "John",
        "phone": "16505551212",
        "email": "john@example.com",
    }
    wire = normalize_user_data(user_data)
    assert list(wire) == list(WIRE_KEYS)
    assert list(normalize_user_data(dict(reversed(user_data.items())))) == list(WIRE_KEYS)


def test_input_mapping_not_modified_and_any_mapping_accepted() -> None:
    user_data = {"email": ["A@example.com"], "country": "US"}
    wire = normalize_user_data(MappingProxyType(user_data))
    assert wire == {"em": [h("a@example.com")], "country": h("us")}
    assert user_data == {"email": ["A@example.com"], "country": "US"}


# --------------------------------------------------------------------------------------------
# The fast path (one plain string per key, hashes kept for repeated values) against the
# general path


class _Text(str):
    """A str subclass: normalize_user_data takes its general path for it."""


_ANY_KEY = ["", "   ", "x" * 200, "A" * 64, "0" * 64, "Zoë"]
_LIKELY_BY_KEY = {
    "em": [" Ann.Lee@Example.com ", "ann@example", "a@b.c"],
    "ph": ["+1 (650) 555-1212", "+44 (0)20 7946 0000", "0044 20 7946 0000", "555-1212"],
    "fn": ["Ann", "Mary-Ann", "José"], "ln": ["Lee", "O'Brien"],
    "ct": ["Menlo Park", "São Paulo"],
    "st": ["CA", "California", "ny", "Georgia", "Bavaria"],
    "zp": ["94025", "94025-1234", "SW1A 1AA", "10115"],
    "country_code": ["US", "United States", "gb", "DEU", "ge", "nowhere"],
    "db": ["1990-02-14", "19900214", "14/02/1990"], "ge": ["f", "Male", "x"],
    "external_id": ["cust-1001", "Cust-1001"],
    "client_ip_address": ["203.0.113.7", "::ffff:203.0.113.7", "2001:db8::1", "not an ip"],
    "fbp": ["fb.1.1700000000000.1234567890"],
}  # fmt: skip
_WIRE_NAMES = sorted({wire: key for key, wire in USER_DATA_KEYS.items()}.values())
_USER_DATA = st.fixed_dictionaries(
    {},
    optional={
        key: st.one_of(
            st.sampled_from(_LIKELY_BY_KEY.get(key, []) + _ANY_KEY), st.text(max_size=40)
        )
        for key in _WIRE_NAMES
    },
)


@settings(max_examples=500, deadline=None)
@given(_USER_DATA, st.sampled_from([None, "gb", "us", "de"]))
def test_the_fast_path_and_its_kept_results_match_the_general_path(
    user_data: dict[str, str], default_country: str | None
) -> None:
    with _warnings() as general_warnings:
        general = normalize_user_data(
            {key: _Text(value) for key, value in user_data.items()},
            default_country=default_country,
        )
    # Twice: the second call may come from the kept results, and must log the same drops.
    for _ in range(2):
        with _warnings() as warnings:
            assert normalize_user_data(user_data, default_country=default_country) == general
        assert warnings == general_warnings


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _warnings() -> Iterator[list[str]]:
    """The messages the normaliser logs meanwhile (caplog is per test, not per example)."""
    handler = _Collect()
    logger = logging.getLogger("pixelmirror.normalize")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def test_a_kept_result_is_a_copy_the_caller_may_change() -> None:
    user_data = {"email": "ann@example.com", "client_ip_address": "203.0.113.7"}
    first = normalize_user_data(user_data)
    first["em"] = "changed"
    assert normalize_user_data(user_data)["em"] == sha256_hex("ann@example.com")


# --------------------------------------------------------------------------------------------
# Phone numbers written the national way: completed with the country's calling code

NATIONAL_PHONES = [
    pytest.param("(650) 555-1212", "us", "16505551212", id="us"),
    pytest.param("1-650-555-1212", "us", "16505551212", id="us-trunk-1"),
    pytest.param("(416) 555-0199", "ca", "14165550199", id="ca"),
    pytest.param("020 7946 0000", "gb", "442079460000", id="gb-landline"),
    pytest.param("07911 123456", "gb", "447911123456", id="gb-mobile"),
    pytest.param("447911123456", "gb", "447911123456", id="gb-code-without-plus"),
    pytest.param("44 (0)20 7946 0000", "gb", "442079460000", id="gb-code-and-bracketed-trunk"),
    pytest.param("7911 123456", "gb", "447911123456", id="gb-without-trunk"),
    pytest.param("030 1234567", "de", "49301234567", id="de-berlin"),
    pytest.param("0151 23456789", "de", "4915123456789", id="de-mobile"),
    pytest.param("4930 1234567", "de", "49301234567", id="de-code-without-plus"),
    pytest.param("01 23 45 67 89", "fr", "33123456789", id="fr"),
    pytest.param("06 12 34 56 78", "fr", "33612345678", id="fr-mobile"),
    pytest.param("06 1234 5678", "it", "390612345678", id="it-keeps-its-zero"),
    pytest.param("02 1234 5678", "it", "390212345678", id="it-milan-keeps-its-zero"),
    pytest.param("312 345 6789", "it", "393123456789", id="it-mobile"),
    pytest.param("393 123 4567", "it", "393931234567", id="it-mobile-starting-39"),
    pytest.param("612 345 678", "es", "34612345678", id="es"),
    pytest.param("34 612 345 678", "es", "34612345678", id="es-code-without-plus"),
    pytest.param("(11) 91234-5678", "br", "5511912345678", id="br-mobile"),
    pytest.param("0 11 3456-7890", "br", "551134567890", id="br-trunk"),
    pytest.param("98765 43210", "in", "919876543210", id="in"),
    pytest.param("098765 43210", "in", "919876543210", id="in-trunk"),
    pytest.param("02 9876 5432", "au", "61298765432", id="au"),
    pytest.param("0412 345 678", "au", "61412345678", id="au-mobile"),
    pytest.param("03-1234-5678", "jp", "81312345678", id="jp"),
    pytest.param("090-1234-5678", "jp", "819012345678", id="jp-mobile"),
    pytest.param("55 1234 5678", "mx", "525512345678", id="mx"),
    pytest.param("8 (916) 123-45-67", "ru", "79161234567", id="ru-trunk-8"),
    pytest.param("020 7946 0000", "GBR", "442079460000", id="alpha3-country"),
    pytest.param("020 7946 0000", "United Kingdom", "442079460000", id="country-name"),
    pytest.param("011 4123 4567", "ar", "1141234567", id="outside-the-table-as-given"),
]


@pytest.mark.parametrize(("phone", "country", "digits"), NATIONAL_PHONES)
def test_a_national_phone_gets_the_calling_code_of_the_country_given(
    phone: str, country: str, digits: str
) -> None:
    assert one("phone", phone, country=country) == h(digits)
    # The general path (a list of values) completes them the same way.
    assert normalize_user_data({"phone": [phone], "country": country})["ph"] == [h(digits)]


@pytest.mark.parametrize(("phone", "country", "digits"), NATIONAL_PHONES)
def test_a_national_phone_gets_the_calling_code_of_the_default_country(
    phone: str, country: str, digits: str
) -> None:
    assert normalize_user_data({"phone": phone}, default_country=country)["ph"] == h(digits)


def test_the_country_given_wins_over_the_default_country() -> None:
    wire = normalize_user_data({"phone": "020 7946 0000", "country": "gb"}, default_country="us")
    assert wire["ph"] == h("442079460000")


def test_a_country_given_already_hashed_still_completes_a_phone() -> None:
    wire = normalize_user_data({"phone": "020 7946 0000", "country": h("gb")})
    assert wire["ph"] == h("442079460000")


def test_with_several_countries_a_national_phone_is_hashed_as_given() -> None:
    wire = normalize_user_data(
        {"phone": "020 7946 0000", "country": ["gb", "fr"]}, default_country="gb"
    )
    assert wire["ph"] == h("2079460000")


@pytest.mark.parametrize("phone", ["(650) 555-1212", "020 7946 0000", "06 1234 5678"])
def test_without_any_country_a_national_phone_is_hashed_as_before(phone: str) -> None:
    assert one("phone", phone) == h("".join(c for c in phone if c.isdigit()).lstrip("0"))


def test_an_unknown_default_country_is_refused() -> None:
    with pytest.raises(ValueError, match="default_country"):
        normalize_user_data({"phone": "650 555 1212"}, default_country="Atlantis")


@pytest.mark.parametrize(
    "phone",
    [
        "(650) 555-1212 ext. 123",
        "(650) 555-1212 Ext 9",
        "650-555-1212 x12",
        "650.555.1212X7",
        "650 555 1212 #9",
        "650 555 1212 extension 4410",
        "+1 650 555 1212 ext. 123",
    ],
)
def test_an_extension_is_dropped(phone: str) -> None:
    assert one("phone", phone, country="us") == h("16505551212")


def test_ascii_letters_and_digits_are_all_isalnum_passes() -> None:
    """The rules skip their substitutions for ASCII text that isalnum: such text holds only
    a-z, A-Z and 0-9, which none of those patterns removes (next test)."""
    ascii_alnum = [c for c in map(chr, range(128)) if c.isalnum()]
    assert "".join(ascii_alnum) == string.digits + string.ascii_uppercase + string.ascii_lowercase


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=20))
def test_the_rules_substitutions_leave_ascii_letters_and_digits_alone(text: str) -> None:
    lower = text.lower()
    for pattern in (_ASCII_NOT_ALNUM, _ASCII_NOT_ALNUM_SPACE, _ZIP_JUNK):
        assert pattern.sub("", lower) == lower
    assert " ".join(lower.split()) == "".join(lower.split()) == lower


def test_only_x_and_X_are_an_x_to_the_extension_pattern() -> None:
    """phone_digits looks for an extension only in text holding an x, an X or a #: every form
    of the pattern holds one, and no other character matches an x without regard to case."""
    assert [c for c in range(sys.maxunicode + 1) if re.fullmatch("x", chr(c), re.I)] == [
        ord("X"),
        ord("x"),
    ]
    assert all(_EXTENSION.search(f"555 1212 {form}") for form in ["ext 1", "x1", "#1", "EXTN 1"])
    assert not _EXTENSION.search("555 1212 ext")


def _random_international(rng: random.Random) -> str:
    """A number of 7 to 15 digits after a ``+`` or ``00``, formatted the many ways people do."""
    digits = str(rng.randint(1, 9)) + "".join(
        str(rng.randint(0, 9)) for _ in range(rng.randint(6, 14))
    )
    parts, rest = [], digits
    while rest:
        cut = rng.randint(1, 4)
        parts.append(rest[:cut])
        rest = rest[cut:]
    separator = rng.choice([" ", "-", ".", "", " - "])
    body = separator.join(parts)
    if len(parts) > 2 and rng.random() < 0.3 and parts[1].strip("0"):  # "(0)": a trunk zero
        body = f"{parts[0]} ({parts[1]}) {separator.join(parts[2:])}"
    return rng.choice(["+", "+ ", "00", "00 ", "tel: +"]) + body


INTERNATIONAL = [_random_international(random.Random(seed)) for seed in range(300)]
TABLE_COUNTRIES = [row[0] for row in _geo.PHONE_NUMBERING]


@pytest.mark.parametrize(("index", "phone"), list(enumerate(INTERNATIONAL)))
def test_a_number_given_with_plus_or_00_keeps_its_hash_whatever_the_country(
    index: int, phone: str
) -> None:
    as_before = h("".join(c for c in phone if c.isdigit()).lstrip("0"))
    assert one("phone", phone) == as_before
    country = TABLE_COUNTRIES[index % len(TABLE_COUNTRIES)]
    assert one("phone", phone, country=country) == as_before
    assert normalize_user_data({"phone": phone}, default_country=country)["ph"] == as_before


@pytest.mark.parametrize("country", TABLE_COUNTRIES)
def test_every_international_number_of_the_table_keeps_its_hash_in_every_country(
    country: str,
) -> None:
    for phone in INTERNATIONAL[:50]:
        as_before = h("".join(c for c in phone if c.isdigit()).lstrip("0"))
        assert one("phone", phone, country=country) == as_before, phone


def test_the_numbering_table_is_well_formed() -> None:
    codes = {row[0] for row in _geo.COUNTRIES}
    seen = set()
    for alpha2, code, trunk, shortest, longest in _geo.PHONE_NUMBERING:
        assert alpha2 in codes
        assert alpha2 not in seen
        seen.add(alpha2)
        assert code.isdigit()
        assert trunk == "" or trunk.isdigit()
        assert 4 <= shortest <= longest <= 13
        assert len(code) + longest <= 15  # E.164's limit


# --------------------------------------------------------------------------------------------
# A visitor's own user data


def _random_own_visitor(
    rng: random.Random,
) -> tuple[str, str | None, str | None, str | None, str | None]:
    """Values in the forms Identity makes them: a SHA-256 hex id, an address as Proxies writes
    it, a stripped User-Agent (quotes, escapes, unicode, controls inside), _fbp / _fbc as
    their patterns take them (or minted), or None."""
    external_id = h(str(rng.random()))
    address: ipaddress.IPv4Address | ipaddress.IPv6Address = rng.choice(
        [ipaddress.IPv4Address(rng.getrandbits(32)), ipaddress.IPv6Address(rng.getrandbits(128))]
    )
    client_ip = rng.choice([address.compressed, None])
    odd = '"\\é€\u2028\u0000\u001f\t\n😀 /;()' + string.ascii_letters
    agent = "".join(rng.choices(odd, k=rng.randint(1, 60))).strip()
    user_agent = rng.choice([agent or "x", "Mozilla/5.0 (X11; Linux x86_64)", None])
    appendix = rng.choice(["", ".AbC-_9"])
    fbp = rng.choice(
        [f"fb.{rng.randint(0, 9)}.{rng.getrandbits(40)}.{rng.getrandbits(31)}{appendix}", None]
    )
    clid_chars = [chr(c) for c in range(0x21, 0x7F) if chr(c) not in '".;\\']
    fbclid = "".join(rng.choices(clid_chars, k=rng.randint(1, 40)))
    fbc = rng.choice([f"fb.{rng.randint(0, 9)}.{rng.getrandbits(40)}.{fbclid}{appendix}", None])
    return external_id, client_ip, user_agent, fbc, fbp


@pytest.mark.parametrize("seed", range(4))
def test_a_visitors_own_wire_user_data_is_the_checked_one(seed: int) -> None:
    # Values in Identity's forms pass every rule as they are: writing them without the
    # checks gives what the checks give, and what normalising gives.
    rng = random.Random(seed)
    for _ in range(1000):
        values = _random_own_visitor(rng)
        own = own_visitor_wire(*values)
        assert own == visitor_wire(*values), values
        external_id, client_ip, user_agent, fbc, fbp = values
        fields = {
            "external_id": external_id,
            "client_ip_address": client_ip,
            "client_user_agent": user_agent,
            "fbc": fbc,
            "fbp": fbp,
        }
        normalised = wire_user_data(fields)
        assert own == (normalised.text(), tuple(normalised.data)), values

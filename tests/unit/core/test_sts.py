"""policyd.core.sts: MX pattern matching (RFC 8461 4.1) and the policy a Postfix gets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.codec.postfix_policy import render
from policyd.core import sts
from policyd.core.evidence import (
    StsMode,
    StsPolicy,
)
from policyd.core.types import Policy, TlsLevel


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("mx.example.com", "mx.example.com", True),
        ("mx.example.com", "MX.Example.COM.", True),
        ("MX.example.com.", "mx.example.com", True),
        ("mx.example.com", "mx2.example.com", False),
        ("mx.example.com", "a.mx.example.com", False),
        ("*.example.com", "mx.example.com", True),
        ("*.Example.com", "MX.example.com.", True),
        ("*.example.com", "a.b.example.com", False),  # one label only (RFC 8461 4.1)
        ("*.example.com", "example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.example.com", "mxexample.com", False),
        ("*.example.com", "mx.example.org", False),
        ("*.example.com", "*.example.com", True),  # "*" is a label as far as hosts go
        ("example.com", "*.example.com", False),
        ("*example.com", "mx.example.com", False),
    ],
)
def test_mx_matches(pattern: str, host: str, ok: bool) -> None:
    assert sts.mx_matches(pattern, host) is ok


@given(
    st.from_regex(r"\A[a-z0-9-]{1,10}\Z"), st.from_regex(r"\A[a-z0-9-]{1,10}(\.[a-z]{1,5}){1,3}\Z")
)
def test_mx_matches_wildcard_property(label: str, domain: str) -> None:
    assert sts.mx_matches("*." + domain, f"{label}.{domain}")
    assert not sts.mx_matches("*." + domain, f"x.{label}.{domain}")
    assert not sts.mx_matches("*." + domain, domain)


@pytest.mark.parametrize(
    ("pattern", "mapped"),
    [
        ("mx.example.com", "mx.example.com"),
        ("MX.Example.com.", "mx.example.com"),
        ("*.example.com", ".example.com"),
        ("*.Example.COM.", ".example.com"),
    ],
)
def test_postfix_match(pattern: str, mapped: str) -> None:
    assert sts.postfix_match(pattern) == mapped


def test_to_policy_plain() -> None:
    pol = StsPolicy(StsMode.ENFORCE, ("mx1.example.com", "*.example.net"), 86400, "id", 0.0)
    got = sts.to_policy("example.com", pol, with_sts_attributes=False)
    assert got == Policy(
        TlsLevel.SECURE,
        ("mx1.example.com", ".example.net"),
        (("servername", "hostname"),),
    )


def test_to_policy_with_sts_attributes() -> None:
    pol = StsPolicy(StsMode.ENFORCE, ("MX1.example.com.", "*.example.net"), 86400, "id", 0.0)
    got = sts.to_policy("example.com", pol, with_sts_attributes=True)
    assert got.level is TlsLevel.SECURE
    assert got.match == ("mx1.example.com", ".example.net")
    assert got.attrs == (
        ("servername", "hostname"),
        ("policy_type", "sts"),
        ("policy_domain", "example.com"),
        ("mx_host_pattern", "mx1.example.com"),
        ("mx_host_pattern", "*.example.net"),
        ("policy_string", "version: STSv1"),
        ("policy_string", "mode: enforce"),
        ("policy_string", "mx: MX1.example.com."),
        ("policy_string", "mx: *.example.net"),
        ("policy_string", "max_age: 86400"),
    )
    # Postfix >= 3.10 reads values with spaces in braces (smtp_tls_policy.c: extpar).
    assert render(got).endswith(
        "mx_host_pattern=*.example.net { policy_string = version: STSv1 }"
        " { policy_string = mode: enforce } { policy_string = mx: MX1.example.com. }"
        " { policy_string = mx: *.example.net } { policy_string = max_age: 86400 }"
    )


def test_to_policy_deduplicates_match() -> None:
    pol = StsPolicy(StsMode.ENFORCE, ("*.a.example", "*.A.example.", "b.example"), 1, "id", 0.0)
    got = sts.to_policy("example", pol, with_sts_attributes=False)
    assert got.match == (".a.example", "b.example")

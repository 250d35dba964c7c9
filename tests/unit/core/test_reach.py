"""The outbound fence (security review L2): which addresses probes and fetches may reach."""

from __future__ import annotations

import pytest

from policyd.core.reach import GLOBAL_ONLY, Reach


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # the kernel connects it to 127.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64's well-known prefix carries 127.0.0.1
        ("2002:7f00:1::1", "loopback"),  # 6to4 carries 127.0.0.1
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("100.64.0.1", "not global"),  # shared address space (RFC 6598)
    ],
)
def test_non_global_addresses_are_refused(address: str, kind: str) -> None:
    refusal = GLOBAL_ONLY.refusal(address)
    assert refusal == f"address not allowed: {address} is {kind} (see [outbound] allow_networks)"
    assert not GLOBAL_ONLY.allows(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_global_addresses_are_allowed(address: str) -> None:
    assert GLOBAL_ONLY.refusal(address) == ""


def test_the_allowlist_opens_its_networks_only() -> None:
    reach = Reach.of(("10.1.0.0/16", "fd12:3456::/48", "127.0.0.0/8"))
    assert reach.allows("10.1.2.3")
    assert reach.allows("::ffff:10.1.2.3")  # mapped: judged as the IPv4 address
    assert reach.allows("fd12:3456::25")
    assert reach.allows("127.0.0.2")
    assert not reach.allows("10.2.0.1")
    assert not reach.allows("169.254.169.254")
    assert not reach.allows("::1")  # 127.0.0.0/8 says nothing of IPv6 loopback


def test_what_is_no_address_is_refused() -> None:
    assert GLOBAL_ONLY.refusal("mx.example").startswith("address not allowed: 'mx.example'")


def test_a_network_with_host_bits_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="host bits"):
        Reach.of(("10.1.2.3/8",))

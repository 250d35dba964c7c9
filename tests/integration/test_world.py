"""The test world itself: namespace, signed DNS behind a validating resolver, test CA.

Everything is checked twice where it matters: with ``dig`` (a separate program, so the
namespace really is inherited by subprocesses) and with dnspython (the library policyd uses).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path
from typing import Final

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tests.world.addresses import AUTHORITATIVE, HOSTS, RESOLVER
from tests.world.ca import tlsa_data
from tests.world.scenarios import SCENARIOS
from tests.world.world import World

pytestmark = pytest.mark.integration

QUERY_TIMEOUT: Final = 3.0  # seconds: a loopback answer takes milliseconds
DOWN_TIMEOUT: Final = 0.5  # seconds to wait for an answer from a stopped resolver
DIG_TIMEOUT: Final = 10.0  # seconds for one dig process

SECURE = [
    ("test.", "SOA"),
    ("dane-ee.test.", "MX"),
    ("mx.dane-ee.test.", "A"),
    ("_25._tcp.mx.dane-ee.test.", "TLSA"),
    ("_25._tcp.mx.dane-ta.test.", "TLSA"),
    ("_25._tcp.mx1.dane-partial.test.", "TLSA"),
    ("_25._tcp.mx.tlsa-bogus.test.", "TLSA"),
    ("mx.aaaa-bogus.test.", "A"),  # only its AAAA is bogus
    ("_25._tcp.mx.aaaa-bogus.test.", "TLSA"),
    ("implicit.test.", "A"),
    ("_25._tcp.implicit.test.", "TLSA"),
    ("nullmx.test.", "MX"),
    ("plain.test.", "MX"),
    ("_mta-sts.dane-sts.test.", "TXT"),
    ("mta-sts.dane-sts.test.", "A"),
]
INSECURE = [
    ("insecure.test.", "MX"),
    ("_25._tcp.mx.insecure.test.", "TLSA"),
    ("unsignedmx.test.", "MX"),
]
BOGUS = [
    ("bogus.test.", "MX"),
    ("expired.test.", "MX"),
    ("mx.bogushost.test.", "A"),
    ("_25._tcp.mx.bogushost.test.", "TLSA"),
    ("mx.aaaa-bogus.test.", "AAAA"),
]


def dig(qname: str, rdtype: str, *extra: str, server: str = RESOLVER) -> str:
    res = subprocess.run(
        ["dig", f"@{server}", qname, rdtype, "+dnssec", "+time=2", "+tries=1", *extra],
        capture_output=True,
        text=True,
        timeout=DIG_TIMEOUT,
        check=False,
    )
    return res.stdout


def dig_flags(output: str) -> set[str]:
    line = next(ln for ln in output.splitlines() if ln.startswith(";; flags:"))
    return set(line.split(";")[2].split(":")[1].split())


def dig_status(output: str) -> str:
    line = next(ln for ln in output.splitlines() if "status:" in ln)
    return line.split("status:")[1].split(",")[0].strip()


def resolver() -> dns.resolver.Resolver:
    """dnspython pointed at the world's unbound, asking for DNSSEC (DO bit)."""
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [RESOLVER]
    res.use_edns(0, dns.flags.DO, 1232)
    res.lifetime = QUERY_TIMEOUT
    res.retry_servfail = False
    return res


def raw(qname: str, rdtype: str, *, cd: bool = False) -> dns.message.Message:
    query = dns.message.make_query(qname, rdtype, want_dnssec=True)
    if cd:
        query.flags |= dns.flags.CD
    return dns.query.udp(query, RESOLVER, timeout=QUERY_TIMEOUT)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def tlsa_of(qname: str) -> list[tuple[int, int, int, bytes]]:
    answer = resolver().resolve(qname, "TLSA")
    assert answer.response.flags & dns.flags.AD
    return [(r.usage, r.selector, r.mtype, r.cert) for r in answer]


# -- the namespace ---------------------------------------------------------------------


def test_this_thread_is_in_the_world_namespace(world: World) -> None:
    here = os.stat("/proc/thread-self/ns/net").st_ino
    assert here == os.stat(f"/run/netns/{world.ns}").st_ino
    assert world.ns == f"policyd-t{os.getpid()}"


def test_subprocesses_inherit_the_namespace(world: World) -> None:
    out = world.run(["ip", "-o", "-4", "addr", "show", "dev", "lo"], capture_output=True, text=True)
    assert f"{AUTHORITATIVE}/32" in out.stdout
    links = world.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"]


def test_exec_prefix_sees_the_world_resolv_conf(world: World) -> None:
    out = world.run([*world.exec_prefix(), "cat", "/etc/resolv.conf"], capture_output=True)
    assert out.stdout.decode().split() == ["nameserver", RESOLVER]


def test_every_host_has_its_own_loopback_address(world: World) -> None:
    addresses = list(HOSTS.values())
    assert len(set(addresses)) == len(addresses)
    assert not {RESOLVER, AUTHORITATIVE} & set(addresses)
    loopback = ipaddress.ip_network("127.0.0.0/8")
    assert all(ipaddress.ip_address(a) in loopback for a in addresses)
    assert dict(HOSTS).items() <= world.hosts.items()  # extensions add their own


# -- validation, with dig --------------------------------------------------------------


@pytest.mark.parametrize(("qname", "rdtype"), SECURE)
def test_dig_secure_answers_have_ad(world: World, qname: str, rdtype: str) -> None:
    out = dig(qname, rdtype)
    assert dig_status(out) == "NOERROR", out
    assert "ad" in dig_flags(out), out


@pytest.mark.parametrize(("qname", "rdtype"), INSECURE)
def test_dig_insecure_answers_lack_ad(world: World, qname: str, rdtype: str) -> None:
    out = dig(qname, rdtype)
    assert dig_status(out) == "NOERROR", out
    assert "ad" not in dig_flags(out), out


@pytest.mark.parametrize(("qname", "rdtype"), BOGUS)
def test_dig_bogus_is_servfail(world: World, qname: str, rdtype: str) -> None:
    out = dig(qname, rdtype)
    assert dig_status(out) == "SERVFAIL", out
    # The data is there: only validation rejects it (checking disabled gets it).
    unchecked = dig(qname, rdtype, "+cd")
    assert dig_status(unchecked) == "NOERROR", unchecked


def test_dig_nxdomain_is_validated(world: World) -> None:
    out = dig("nonexistent.test.", "MX")
    assert dig_status(out) == "NXDOMAIN", out
    assert "ad" in dig_flags(out), out


def test_dig_authoritative_does_not_recurse_or_validate(world: World) -> None:
    out = dig(".", "SOA", "+norec", server=AUTHORITATIVE)
    assert dig_status(out) == "NOERROR", out
    assert "aa" in dig_flags(out) and "ad" not in dig_flags(out), out


# -- validation, with dnspython --------------------------------------------------------


@pytest.mark.parametrize(("qname", "rdtype"), SECURE)
def test_dnspython_secure_answers_have_ad(world: World, qname: str, rdtype: str) -> None:
    answer = resolver().resolve(qname, rdtype)
    assert answer.response.flags & dns.flags.AD


@pytest.mark.parametrize(("qname", "rdtype"), INSECURE)
def test_dnspython_insecure_answers_lack_ad(world: World, qname: str, rdtype: str) -> None:
    answer = resolver().resolve(qname, rdtype)
    assert not answer.response.flags & dns.flags.AD


@pytest.mark.parametrize(("qname", "rdtype"), BOGUS)
def test_dnspython_bogus_is_servfail(world: World, qname: str, rdtype: str) -> None:
    assert raw(qname, rdtype).rcode() == dns.rcode.SERVFAIL
    assert raw(qname, rdtype, cd=True).rcode() == dns.rcode.NOERROR
    with pytest.raises(dns.resolver.NoNameservers):
        resolver().resolve(qname, rdtype)


def test_dnspython_nxdomain_has_ad(world: World) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver().resolve("nonexistent.test.", "MX")
    response = raw("nonexistent.test.", "MX")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AD


def test_mx_cname_is_followed_and_secure(world: World) -> None:
    answer = resolver().resolve(world.scenarios["mx-cname"], "MX")
    assert answer.response.flags & dns.flags.AD
    assert answer.canonical_name.to_text() == "real.mx-cname.test."
    assert [r.exchange.to_text() for r in answer] == ["mx.mx-cname.test."]


def test_nullmx_and_two_mx(world: World) -> None:
    assert [r.exchange.to_text() for r in resolver().resolve("nullmx.test.", "MX")] == ["."]
    partial = sorted(
        (r.preference, r.exchange.to_text()) for r in resolver().resolve("dane-partial.test.", "MX")
    )
    assert partial == [(10, "mx1.dane-partial.test."), (20, "mx2.dane-partial.test.")]
    # mx2 has no TLSA: a validated NXDOMAIN (nothing exists below mx2).
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver().resolve("_25._tcp.mx2.dane-partial.test.", "TLSA")
    assert raw("_25._tcp.mx2.dane-partial.test.", "TLSA").flags & dns.flags.AD


def test_hosts_resolve_to_the_address_table(world: World) -> None:
    bogus = tuple("." + z.name for z in world.zones if z.bogus)
    for host, address in HOSTS.items():
        if (host + ".").endswith(bogus):
            assert raw(host + ".", "A").rcode() == dns.rcode.SERVFAIL, host
            continue
        answer = resolver().resolve(host + ".", "A")
        assert [r.address for r in answer] == [address], host


def test_bad_ds_really_is_a_wrong_ds(world: World) -> None:
    # named serves a DS for bogus.test whose key tag matches no DNSKEY of the zone.
    ds = dns.query.udp(
        dns.message.make_query("bogus.test.", "DS"), AUTHORITATIVE, timeout=QUERY_TIMEOUT
    )
    keys = dns.query.udp(
        dns.message.make_query("bogus.test.", "DNSKEY"), AUTHORITATIVE, timeout=QUERY_TIMEOUT
    )
    tags = {r.key_tag for rrset in ds.answer for r in rrset if rrset.rdtype == dns.rdatatype.DS}
    assert tags
    dnskeys = [r for rrset in keys.answer for r in rrset if rrset.rdtype == dns.rdatatype.DNSKEY]
    assert len(dnskeys) == 2
    assert not tags & {dns.dnssec.key_id(k) for k in dnskeys}


# -- TLSA records against the certificates ---------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "mx.dane-ee.test",
        "mx1.dane-partial.test",
        "mx.tlsa-bogus.test",
        "mx.mx-cname.test",
        "implicit.test",
        "mx.dane-sts.test",
    ],
)
def test_dane_ee_tlsa_matches_the_leaf(world: World, host: str) -> None:
    cert = load_cert(world.certs[host].cert)
    assert tlsa_of(f"_25._tcp.{host}.") == [(3, 1, 1, tlsa_data(cert, 1, 1))]


def test_dane_ta_tlsa_matches_the_intermediate_in_the_chain(world: World) -> None:
    cert_path, _key, chain_path = world.certs["mx.dane-ta.test"]
    chain = x509.load_pem_x509_certificates(chain_path.read_bytes())
    assert chain[0] == load_cert(cert_path) and len(chain) == 2
    assert tlsa_of("_25._tcp.mx.dane-ta.test.") == [(2, 0, 1, tlsa_data(chain[1], 0, 1))]


def test_dane_mismatch_tlsa_matches_no_served_key(world: World) -> None:
    ((usage, selector, mtype, data),) = tlsa_of("_25._tcp.mx.dane-mismatch.test.")
    assert (usage, selector, mtype) == (3, 1, 1)
    served = {tlsa_data(load_cert(files.cert), 1, 1) for files in world.certs.values()}
    assert data not in served


def test_tlsa_data_forms(world: World) -> None:
    cert = load_cert(world.certs["mx.dane-ee.test"].cert)
    assert tlsa_data(cert, 0, 0) == cert.public_bytes(Encoding.DER)
    assert len(tlsa_data(cert, 0, 1)) == 32 and len(tlsa_data(cert, 1, 2)) == 64
    assert tlsa_data(cert, 1, 1) != tlsa_data(cert, 0, 1)


# -- the CA ----------------------------------------------------------------------------


def verify(world: World, host: str, leaf: x509.Certificate, chain: list[x509.Certificate]) -> None:
    store = Store([load_cert(world.ca_file)])
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(host))
    verifier.verify(leaf, chain)


def test_every_leaf_chains_to_the_root(world: World) -> None:
    assert set(HOSTS) <= world.certs.keys()
    for host, (cert, key, chain) in world.certs.items():
        assert key.stat().st_mode & 0o077 == 0
        certs = x509.load_pem_x509_certificates(chain.read_bytes())
        verify(world, host, load_cert(cert), certs[1:])


@pytest.mark.parametrize("variant", ["expired", "not-yet-valid", "self", "wrong-name"])
def test_bad_leaves_do_not_verify(world: World, variant: str) -> None:
    if variant == "self":
        leaf = world.ca.issue(["bad.test"], stem="t-self", issuer="self", key_type="rsa")
    elif variant == "wrong-name":
        leaf = world.ca.issue(["other.test"], stem="t-wrong")
    else:
        leaf = world.ca.issue(["bad.test"], stem=f"t-{variant}", validity=variant)  # type: ignore[arg-type]
    chain = x509.load_pem_x509_certificates(leaf.files.chain.read_bytes())
    with pytest.raises(VerificationError):
        verify(world, "bad.test", leaf.cert, chain[1:])


def test_root_issued_leaf_verifies(world: World) -> None:
    leaf = world.ca.issue(["direct.test"], stem="t-direct", issuer="root", key_type="rsa")
    verify(world, "direct.test", leaf.cert, [])


# -- scenarios -------------------------------------------------------------------------


def test_scenarios_are_exported(world: World) -> None:
    assert world.scenarios["mx-cname"] == "cname.mx-cname.test"
    assert world.expected["bogus.test"] == "TEMP"
    assert {s.name for s in SCENARIOS} <= set(world.scenarios)
    assert world.ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


# -- resolver outage (last: it restarts unbound) ---------------------------------------


def test_stopped_resolver_times_out_and_comes_back(world: World) -> None:
    world.stop_unbound()
    try:
        with pytest.raises((dns.exception.Timeout, ConnectionRefusedError)):
            dns.query.udp(
                dns.message.make_query("dane-ee.test.", "MX"), RESOLVER, timeout=DOWN_TIMEOUT
            )
        res = resolver()
        res.lifetime = DOWN_TIMEOUT
        with pytest.raises((dns.resolver.LifetimeTimeout, dns.resolver.NoNameservers)):
            res.resolve("dane-ee.test.", "MX")
        out = dig("dane-ee.test.", "MX", "+time=1")
        assert "status:" not in out, out
    finally:
        world.start_unbound()
    assert resolver().resolve("dane-ee.test.", "MX").response.flags & dns.flags.AD
    world.flush_unbound()
    assert "ad" in dig_flags(dig("dane-ee.test.", "MX"))

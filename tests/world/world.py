"""The test world: a network namespace with signed DNS (named + unbound) and a test CA.

``build_world`` moves the calling thread into the namespace and leaves it there until
``World.close()``: everything the thread starts meanwhile (policyd, postmap, servers) sees
only the world's loopback network.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tests.world import netns
from tests.world.addresses import AUTHORITATIVE, HOSTS, RESOLVER
from tests.world.ca import CertAuthority, CertFiles, Leaf
from tests.world.dns import BuiltTree, Zone, build_tree
from tests.world.nameservers import Named, Unbound

RUN_TIMEOUT: Final = 60.0  # default bound for World.run(); pass timeout= to change it


@dataclass
class Pki:
    """The CA and one leaf per host (signed by the intermediate, EC P-256)."""

    ca: CertAuthority
    leaves: dict[str, Leaf] = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path, hosts: Sequence[str]) -> Pki:
        ca = CertAuthority(directory)
        return cls(ca, {host: ca.issue([host]) for host in hosts})


@dataclass
class World:
    ns: str  # the network namespace name
    dir: Path
    pki: Pki
    tree: BuiltTree
    named: Named
    unbound: Unbound
    hosts: Mapping[str, str] = field(default_factory=lambda: dict(HOSTS))
    resolver: str = RESOLVER
    authoritative: str = AUTHORITATIVE
    # Filled by tests.world.scenarios: scenario name -> domain to look up, and
    # domain -> the answer policyd is expected to give.
    scenarios: dict[str, str] = field(default_factory=dict)
    expected: dict[str, str] = field(default_factory=dict)
    entered: netns.Entered | None = None
    # Stop functions of the servers extensions started (HTTPS, SMTP), run at close().
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def ca(self) -> CertAuthority:
        return self.pki.ca

    @property
    def ca_file(self) -> Path:
        """The root CA certificate, for policyd's ``[tls] ca_file``."""
        return self.pki.ca.ca_file

    @property
    def zones(self) -> list[Zone]:
        return [b.zone for b in self.tree.zones]

    @property
    def certs(self) -> dict[str, CertFiles]:
        """Host -> (cert_path, key_path, chain_path) for the servers of later tests."""
        return {host: leaf.files for host, leaf in self.pki.leaves.items()}

    def exec_prefix(self) -> list[str]:
        """Prefix for programs that must read the namespace's resolv.conf (Postfix)."""
        return netns.exec_prefix(self.ns)

    def run(self, cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run in the world (this thread is in the namespace already)."""
        kw.setdefault("timeout", RUN_TIMEOUT)
        check = bool(kw.pop("check", False))
        return subprocess.run(cmd, check=check, **kw)

    def stop_unbound(self) -> None:
        """Resolver unreachable: queries to ``resolver`` time out until start_unbound()."""
        self.unbound.stop()

    def start_unbound(self) -> None:
        self.unbound.start()

    def restart_unbound(self) -> None:
        self.unbound.stop()
        self.unbound.start()

    def flush_unbound(self) -> None:
        """Empty the resolver's cache (a restart: remote control is off)."""
        self.restart_unbound()

    def close(self) -> None:
        """Stop extension servers and both daemons, take this thread back home, delete the
        namespace; idempotent."""
        while self.closers:
            self.closers.pop()()
        try:
            self.unbound.stop()
        finally:
            try:
                self.named.stop()
            finally:
                if self.entered is not None:
                    self.entered.leave()
                    self.entered = None
                netns.delete(self.ns)


def build_world(tmpdir: Path, zones: Sequence[Zone], *, pki: Pki | None = None) -> World:
    """Create the namespace, enter it, sign ``zones`` and start named and unbound.

    ``pki`` defaults to a fresh CA with a leaf for every host in the address table; pass
    one when zone records (TLSA) depend on its certificates.
    """
    tmpdir.mkdir(parents=True, exist_ok=True)
    pki = pki or Pki.create(tmpdir / "pki", list(HOSTS))
    tree = build_tree(zones, tmpdir / "dns")
    ns = netns.name_for()
    netns.create(ns, bound_addresses=(AUTHORITATIVE,))
    named = Named(tmpdir / "named", AUTHORITATIVE, tree.zones)
    tlds = [b.zone.name for b in tree.zones if b.zone.depth == 1]
    probe_name = "test." if "test." in tlds else "."
    unbound = Unbound(
        tmpdir / "unbound", RESOLVER, AUTHORITATIVE, tree.trust_anchor, tlds, probe_name
    )
    world = World(ns, tmpdir, pki, tree, named, unbound)
    try:
        world.entered = netns.enter(ns)
        named.start()
        unbound.start()
    except BaseException:
        world.close()
        raise
    return world

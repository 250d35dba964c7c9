"""Zones as data, and their build: keys, zone files, delegations, DNSSEC signatures.

A zone's parent is the nearest declared zone above it.  Parents get NS + glue for each
child, and a DS when the child is signed and ``delegate_ds`` is true.  DS records come from
the children's keys, so the build makes every key first, then writes and signs the zones
from the deepest up (dependency order).  The root's KSK is the resolver's trust anchor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from tests.world import procs
from tests.world.addresses import AUTHORITATIVE

Bogus = Literal["bad-ds", "expired", "bad-aaaa-sig"]

ALGORITHM: Final = "ECDSAP256SHA256"  # fast to make, and what unbound validates by default
DS_DIGEST: Final = "SHA-256"
TTL: Final = 60  # seconds: short, so nothing stale survives long in a cache
SOA_TIMERS: Final = "1 3600 600 86400 60"  # serial refresh retry expire minimum(negative TTL)
ROOT_NS: Final = "ns1.test."  # the root's name server; its glue sits in the root zone
# "expired": signatures valid from 30 days ago until 1 day ago, far outside any skew window.
EXPIRED_START: Final = dt.timedelta(days=30)
EXPIRED_END: Final = dt.timedelta(days=1)
PARALLEL: Final = 8  # concurrent dnssec-* runs; they are short and CPU-bound


def absolute(name: str) -> str:
    """``name`` with exactly one trailing dot, lower case (``"."`` for the root)."""
    return name.lower().rstrip(".") + "."


@dataclass(frozen=True)
class Zone:
    """One zone of the world.

    ``records`` are zone-file lines relative to the zone (``"mx A 127.0.1.1"``,
    ``"@ MX 10 mx"``) or absolute (``"mx.example.test. A ..."``); the SOA, the apex NS and
    the delegations to child zones are added by the build.  ``bogus``: ``"bad-ds"`` puts a
    DS for some other key in the parent; ``"expired"`` signs with signatures that expired;
    ``"bad-aaaa-sig"`` corrupts the signatures of AAAA RRsets only (the validating resolver
    answers SERVFAIL for AAAA, the A answers stay secure).
    """

    name: str
    records: Sequence[str] = ()
    signed: bool = True
    delegate_ds: bool = True
    bogus: Bogus | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", absolute(self.name))
        object.__setattr__(self, "records", tuple(self.records))
        if self.bogus is not None and not self.signed:
            raise ValueError(f"{self.name}: a bogus zone must be signed")

    @property
    def is_root(self) -> bool:
        return self.name == "."

    @property
    def depth(self) -> int:
        return 0 if self.is_root else self.name.count(".")

    @property
    def ns_name(self) -> str:
        return ROOT_NS if self.is_root else f"ns1.{self.name}"

    @property
    def file_stem(self) -> str:
        return "root" if self.is_root else self.name.rstrip(".")

    def is_below(self, other: Zone) -> bool:
        return self.name != other.name and (other.is_root or self.name.endswith("." + other.name))


@dataclass
class Keys:
    ksk: Path  # key file path without .key/.private, as dnssec-* tools want it
    zsk: Path
    decoy: Path | None = None  # "bad-ds": a key never in the zone, whose DS goes in the parent


@dataclass
class BuiltZone:
    zone: Zone
    unsigned_file: Path
    file: Path  # what named serves: signed, or the unsigned file for unsigned zones
    keys: Keys | None
    ds: list[str] = field(default_factory=list)  # DS lines for the parent (may be empty)


@dataclass
class BuiltTree:
    zones: list[BuiltZone]
    trust_anchor: str  # the root's DS record in zone-file form

    def find(self, name: str) -> BuiltZone:
        name = absolute(name)
        for built in self.zones:
            if built.zone.name == name:
                return built
        raise KeyError(name)


def parent_of(zone: Zone, zones: Sequence[Zone]) -> Zone | None:
    """The nearest declared zone above ``zone`` (None for the root)."""
    above = [z for z in zones if zone.is_below(z)]
    return max(above, key=lambda z: z.depth) if above else None


def check_tree(zones: Sequence[Zone]) -> list[Zone]:
    """The zones with a signed root added when missing; rejects duplicates."""
    names = [z.name for z in zones]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"zones declared twice: {sorted(dupes)}")
    tree = list(zones) if "." in names else [Zone("."), *zones]
    root = next(z for z in tree if z.is_root)
    if not root.signed or root.bogus:
        raise ValueError("the root zone must be signed and valid: it is the trust anchor")
    return tree


def keygen(zone: Zone, keydir: Path, ksk: bool) -> Path:
    flags = ["-f", "KSK"] if ksk else []
    out = procs.run(
        [
            "dnssec-keygen",
            "-q",
            "-a",
            ALGORITHM,
            *flags,
            "-L",
            str(TTL),
            "-K",
            str(keydir),
            zone.name,
        ]
    )
    return keydir / out.strip()


def make_keys(zone: Zone, keydir: Path) -> Keys:
    keydir.mkdir(parents=True, exist_ok=True)
    keys = Keys(ksk=keygen(zone, keydir, ksk=True), zsk=keygen(zone, keydir, ksk=False))
    if zone.bogus == "bad-ds":
        (keydir / "decoy").mkdir(exist_ok=True)
        keys.decoy = keygen(zone, keydir / "decoy", ksk=True)
    return keys


def ds_lines(key: Path) -> list[str]:
    out = procs.run(["dnssec-dsfromkey", "-a", DS_DIGEST, f"{key}.key"])
    return [line for line in out.splitlines() if line.strip()]


def _dnskey_lines(keys: Keys) -> list[str]:
    lines: list[str] = []
    for key in (keys.ksk, keys.zsk):
        text = Path(f"{key}.key").read_text()
        lines += [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(";")]
    return lines


def zone_text(built: BuiltZone, children: Sequence[BuiltZone]) -> str:
    zone = built.zone
    rname = "hostmaster." if zone.is_root else f"hostmaster.{zone.name}"
    lines = [
        f"$ORIGIN {zone.name}",
        f"$TTL {TTL}",
        f"@ SOA {zone.ns_name} {rname} {SOA_TIMERS}",
        f"@ NS {zone.ns_name}",
        f"{zone.ns_name} A {AUTHORITATIVE}",  # authoritative data, or glue in the root
    ]
    for child in children:
        lines.append(f"; delegation to {child.zone.name}")
        lines.append(f"{child.zone.name} NS {child.zone.ns_name}")
        lines.append(f"{child.zone.ns_name} A {AUTHORITATIVE}")  # glue
        lines += child.ds
    lines.append("; declared records")
    lines += zone.records
    if built.keys is not None:
        lines.append("; keys")
        lines += _dnskey_lines(built.keys)
    # The root's own NS glue is also the glue of its delegation to test.: write it once.
    return "\n".join(dict.fromkeys(lines)) + "\n"


def sign(built: BuiltZone) -> None:
    zone, keys = built.zone, built.keys
    assert keys is not None
    window: list[str] = []
    if zone.bogus == "expired":
        now = dt.datetime.now(dt.UTC)
        stamp = "%Y%m%d%H%M%S"
        window = [
            "-s",
            (now - EXPIRED_START).strftime(stamp),
            "-e",
            (now - EXPIRED_END).strftime(stamp),
            "-P",  # skip the post-signing check: it would (rightly) reject expired signatures
        ]
    if zone.bogus == "bad-aaaa-sig":
        window = ["-O", "full"]  # one record per line, for the tampering below
    procs.run(
        [
            "dnssec-signzone",
            "-q",
            "-o",
            zone.name,
            "-N",
            "keep",
            "-f",
            str(built.file),
            *window,
            str(built.unsigned_file),
            str(keys.ksk),
            str(keys.zsk),
        ],
        cwd=built.unsigned_file.parent,
    )
    if zone.bogus == "bad-aaaa-sig":
        built.file.write_text(_break_aaaa_signatures(built.file.read_text()))


def _break_aaaa_signatures(text: str) -> str:
    """Flip one character inside the signature of every RRSIG covering AAAA (not in its
    final base64 quantum, whose last bits may be padding)."""
    out: list[str] = []
    broken = 0
    for line in text.splitlines():
        fields = line.split()
        if "RRSIG" in fields and fields[fields.index("RRSIG") + 1 :][:1] == ["AAAA"]:
            sig = max(range(len(fields)), key=lambda i: len(fields[i]))
            token = fields[sig]
            flipped = token[:10] + ("B" if token[10] == "A" else "A") + token[11:]
            out.append(line.replace(token, flipped))
            broken += 1
        else:
            out.append(line)
    if not broken:
        raise RuntimeError("bad-aaaa-sig: no RRSIG covering AAAA found")
    return "\n".join(out) + "\n"


def build_tree(zones: Sequence[Zone], directory: Path) -> BuiltTree:
    """Make keys, zone files and signed zone files for ``zones`` under ``directory``."""
    tree = check_tree(zones)
    zonedir = directory / "zones"
    zonedir.mkdir(parents=True, exist_ok=True)
    built: dict[str, BuiltZone] = {}
    with ThreadPoolExecutor(PARALLEL) as pool:
        signed = [z for z in tree if z.signed]
        keys = dict(
            zip(
                [z.name for z in signed],
                pool.map(lambda z: make_keys(z, directory / "keys" / z.file_stem), signed),
                strict=True,
            )
        )
        for zone in tree:
            unsigned = zonedir / f"{zone.file_stem}.zone"
            out = zonedir / f"{zone.file_stem}.zone.signed" if zone.signed else unsigned
            built[zone.name] = BuiltZone(zone, unsigned, out, keys.get(zone.name))
        # DS for each signed child the parent vouches for ("bad-ds": for the decoy key).
        for b in built.values():
            if b.keys is not None and b.zone.delegate_ds and not b.zone.is_root:
                b.ds = ds_lines(b.keys.decoy or b.keys.ksk)
        # Deepest first: a parent is written only after all its children have their DS.
        for depth in sorted({z.depth for z in tree}, reverse=True):
            level = [built[z.name] for z in tree if z.depth == depth]
            for b in level:
                children = [built[z.name] for z in tree if parent_of(z, tree) == b.zone]
                b.unsigned_file.write_text(zone_text(b, children))
            list(pool.map(sign, [b for b in level if b.keys is not None]))
    root_keys = built["."].keys
    assert root_keys is not None
    anchor = "\n".join(ds_lines(root_keys.ksk))
    return BuiltTree([built[z.name] for z in tree], anchor)

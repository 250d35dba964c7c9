"""Memory per cached destination: fills a PolicyService with N destinations and prints RSS
and bytes per destination, per kind of answer, and with the [server] max_destinations cap.

In-process, each measurement in a fresh forked process: the service with its real MTA-STS
and probe sources (the MTA-STS source remembers each domain it looked at) and fake DNS
evidence, so no network is needed and the figures are the per-destination state of the
service and sources. The DNS answer cache is bounded on its own ([dns] cache_entries,
not counted here). Figures only, no assertions.

    .venv/bin/python bench/memory.py [--destinations 1000000] [--others 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import cpu_count
from policyd.adapters.dns import DnsAnswer, Rcode
from policyd.core.evidence import (
    Destination,
    DnsEvidence,
    DnsStatus,
    MxHost,
    MxKind,
    Tlsa,
)
from policyd.core.profile import DEFAULT_PROFILES
from policyd.server.reply_cache import ReplyCache
from policyd.service import PolicyService
from policyd.settings import ProbeSettings
from policyd.sources.probe import ProbeSource
from policyd.sources.sts import StsSource
from tests.fakes import NullStore

CONCURRENCY: Final = 200  # lookups in flight while filling


class Dane:
    """An unsigned MX host and no MTA-STS record for "notfound" (the usual domain: NOTFOUND
    by default, its verdict remembered); NXDOMAIN for "no-mail" (a name first seen not to
    exist: answered, nothing remembered beyond the cached reply); a signed MX host with a
    usable TLSA for "dane-only"; an unsigned MX host for "mta-sts" (whose domains publish
    an enforce policy)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def gather(
        self, dest: Destination, now: float, takes_mail: Callable[[], object] | None = None
    ) -> DnsEvidence:
        if self.kind == "no-mail":
            return DnsEvidence(
                DnsStatus.SECURE, MxKind.NXDOMAIN, fetched_at=now, expires_at=now + 3600
            )
        if self.kind in ("mta-sts", "notfound"):
            plain = MxHost(f"mx.{dest.name}", 10, DnsStatus.INSECURE, ("192.0.2.1",))
            return DnsEvidence(
                DnsStatus.INSECURE, hosts=(plain,), fetched_at=now, expires_at=now + 3600
            )
        host = MxHost(
            f"mx.{dest.name}",
            10,
            DnsStatus.SECURE,
            ("192.0.2.1",),
            tlsa=DnsStatus.SECURE,
            tlsa_records=(Tlsa(3, 1, 1, b"\x01" * 32),),
        )
        return DnsEvidence(DnsStatus.SECURE, hosts=(host,), fetched_at=now, expires_at=now + 3600)


class NoFetch:
    async def fetch(self, domain: str) -> bytes:
        raise AssertionError("no fetch: no TXT record")


class PolicyFetch:
    """An enforce policy naming the domain's own MX host."""

    async def fetch(self, domain: str) -> bytes:
        return (
            f"version: STSv1\r\nmode: enforce\r\nmx: mx.{domain}\r\nmax_age: 604800\r\n"
        ).encode()


class NoTxt:
    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        return DnsAnswer(name, rdtype, DnsStatus.SECURE, Rcode.NOERROR)


class StsTxt:
    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        record = ("v=STSv1; id=20260101T000000;",)
        return DnsAnswer(name, rdtype, DnsStatus.INSECURE, Rcode.NOERROR, record)


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def fill(kind: str, count: int, cap: int) -> tuple[int, int, int, float]:
    store = NullStore()
    if kind == "mta-sts":
        sts = StsSource(store, StsTxt(), PolicyFetch())
    else:
        sts = StsSource(store, NoTxt(), NoFetch())
    probe = ProbeSource(store, None, ProbeSettings(enabled=False))  # type: ignore[arg-type]
    service = PolicyService(
        DEFAULT_PROFILES,
        store,
        Dane(kind),
        sts,
        probe,
        lookup_budget=8.0,
        max_destinations=cap,
    )
    cache = ReplyCache(service)
    writer = asyncio.get_running_loop().create_task(service.writes.run())
    gc.collect()
    before = rss_kib()
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            await cache.reply_for(f"postfix d{i}.example-{kind}.test".encode())

    for start in range(0, count, 10_000):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 10_000))))
    seconds = time.perf_counter() - t0
    await service.writes.flush()
    writer.cancel()
    gc.collect()
    after = rss_kib()
    return before, after, service.cached_answers, seconds


def measure(kind: str, count: int, cap: int, out: mp.Queue[tuple[int, int, int, float]]) -> None:
    out.put(asyncio.run(fill(kind, count, cap)))


def run(kind: str, count: int, cap: int) -> tuple[int, int, int, float]:
    ctx = mp.get_context("fork")
    out: mp.Queue[tuple[int, int, int, float]] = ctx.Queue()
    proc = ctx.Process(target=measure, args=(kind, count, cap, out))
    proc.start()
    result = out.get()
    proc.join()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--destinations", type=int, default=1_000_000, help="NOTFOUND fill")
    ap.add_argument("--others", type=int, default=200_000, help="fill of the other kinds")
    ap.add_argument("--no-cap-run", action="store_true", help="skip the max_destinations run")
    args = ap.parse_args(argv)
    print("# memory per cached destination (in-process PolicyService, fake DNS evidence)")
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, "
        f"{cpu_count()} CPUs, {platform.machine()}"
    )
    plan = [
        ("notfound", args.destinations, 10_000_000),
        ("no-mail", args.others, 10_000_000),
        ("dane-only", args.others, 10_000_000),
        ("mta-sts", args.others, 10_000_000),
        ("notfound", args.destinations, args.destinations // 10),
    ]
    if args.no_cap_run:
        plan.pop()
    for kind, count, cap in plan:
        if count <= 0:
            continue
        before, after, cached, secs = run(kind, count, cap)
        per = (after - before) * 1024 / count
        shown = "no cap" if cap >= 10_000_000 else f"max_destinations {cap:,}"
        print(
            f"{kind:<10} {count:>9,} destinations ({shown}): RSS {before / 1024:6.1f} -> "
            f"{after / 1024:7.1f} MiB, {per:6.0f} bytes/destination, {cached:,} answers "
            f"cached, filled in {secs:.0f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fleet bench: three policyd hosts on one redis-server, a stream of new destinations asked
on every host; prints policy fetches and STARTTLS probes per destination, and the cached
lookup rate of a fleet host against a host alone.

Builds the MTA-STS test world (network namespace: needs root). Destinations are fresh
``<label>.bulk.test`` names (wildcard MX, TXT and A; the world's policy server issues a
certificate per name), so each needs one discovery, one policy fetch and one probe of its
MX ``mx.bulk.test``, where this script serves a small SMTP server without STARTTLS that
counts its sessions. Fetches are counted by the world's policy server (requests.log).
The same stream then runs once more with ``[fleet] enabled = false``, for comparison.

    .venv/bin/python bench/fleet.py [--destinations 300] [--parallel 20] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import socketserver
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.client import lookups, run_clients  # noqa: E402
from bench.harness import bench_world, is_root, machine  # noqa: E402
from tests.daemon import Daemon, base_sections  # noqa: E402
from tests.integration.test_store_redis import RedisServer  # noqa: E402
from tests.world import sts_world  # noqa: E402
from tests.world.world import World  # noqa: E402

HOSTS: Final = 3
SETTLE: Final = 15.0  # seconds to wait for background probes and fetches to finish
ROUNDS: Final = 4  # cached-rate runs per configuration, alternating which goes first
MX_ADDRESS: Final = sts_world.HOSTS[f"mx.{sts_world.BULK}"]


class _Smtp(socketserver.StreamRequestHandler):
    """Banner, EHLO without STARTTLS, QUIT: enough for a probe to say "no STARTTLS"."""

    sessions = 0
    lock = threading.Lock()

    def handle(self) -> None:
        with _Smtp.lock:
            _Smtp.sessions += 1
        self.wfile.write(b"220 mx.bulk.test ESMTP bench\r\n")
        for _ in range(8):
            line = self.rfile.readline(1024).upper()
            if not line:
                return
            if line.startswith((b"EHLO", b"HELO")):
                self.wfile.write(b"250-mx.bulk.test\r\n250 8BITMIME\r\n")
            elif line.startswith(b"QUIT"):
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"502 no\r\n")


@contextmanager
def smtp_server() -> Iterator[None]:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((MX_ADDRESS, 25), _Smtp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def start_host(world: World, directory: Path, store: str, fleet: bool) -> Daemon:
    directory.mkdir(parents=True)
    sections = base_sections(directory, world.resolver)
    sections["store"] = {"url": store}
    sections["fleet"] = {"enabled": fleet}
    sections["tls"] = {"ca_file": str(world.ca_file)}
    sections["log"] = {"level": "warning"}
    sections["dns"].update({"min_ttl": 3600})  # cached answers outlive the bench
    sections["probe"] = {
        "helo_name": "bench.policyd.test",
        "connect_timeout": 2.0,
        "banner_timeout": 2.0,
        "command_timeout": 2.0,
        "tls_timeout": 2.0,
        "total_timeout": 8.0,
    }
    d = Daemon(directory, sections, prefix=world.exec_prefix())
    d.start()
    return d


async def _stream(hosts: Sequence[Daemon], keys: Sequence[str], parallel: int) -> list[str]:
    """Each destination asked on every host at once, ``parallel`` destinations at a time."""
    gate = asyncio.Semaphore(parallel)

    async def one(key: str) -> list[str]:
        async with gate:
            got = await asyncio.gather(*(lookups(h.tcp_port, [key]) for h in hosts))
            return [answers[0][0] for answers in got]

    results = await asyncio.gather(*(one(k) for k in keys))
    return [a for r in results for a in r]


@dataclass
class Stream:
    hosts: list[Daemon]
    keys: list[str]
    redis: RedisServer

    def stop(self) -> None:
        for d in self.hosts:
            d.stop()
        self.redis.stop()


def run_stream(
    world: World, tmp: Path, label: str, fleet: bool, count: int, parallel: int
) -> Stream:
    (tmp / f"{label}-redis").mkdir()
    redis = RedisServer(tmp / f"{label}-redis")
    hosts = [start_host(world, tmp / f"{label}-{i}", redis.url, fleet) for i in range(HOSTS)]
    keys = [f"{label}{i}.{sts_world.BULK}" for i in range(count)]
    fetched_before = sum(sts_world.fetches(world, k) for k in keys)
    sessions_before = _Smtp.sessions
    started = time.monotonic()
    answers = asyncio.run(_stream(hosts, keys, parallel))
    took = time.monotonic() - started
    # Background work (probes, fetches past the cold budget) settles, then count.
    deadline = time.monotonic() + SETTLE
    last: tuple[int, int] | None = None
    while time.monotonic() < deadline:
        now = (_Smtp.sessions, sum(sts_world.fetches(world, k) for k in keys))
        if now == last:
            break
        last = now
        time.sleep(2.0)
    fetches = sum(sts_world.fetches(world, k) for k in keys) - fetched_before
    sessions = _Smtp.sessions - sessions_before
    secure = sum(1 for a in answers if a.startswith("OK secure"))
    mode = "fleet on " if fleet else "fleet off"
    print(
        f"{mode}  {count} destinations x {HOSTS} hosts in {took:5.1f} s: "
        f"policy fetches {fetches} ({fetches / count:.2f} per destination), "
        f"probe sessions at {MX_ADDRESS} {sessions} ({sessions / count:.2f} per destination), "
        f"cold answers with the policy {secure}/{len(answers)}"
    )
    return Stream(hosts, keys, redis)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--destinations", type=int, default=300)
    ap.add_argument("--parallel", type=int, default=20, help="destinations in flight")
    ap.add_argument("--seconds", type=float, default=3.0, help="per cached-rate run")
    args = ap.parse_args(argv)
    if not is_root():
        return 2
    print(f"# fleet bench: {HOSTS} policyd hosts, one redis-server (unix socket); {machine()}")
    with bench_world("policyd-fleet-", "tests.world.sts_world") as bench:
        world, tmp = bench.world, bench.dir
        with smtp_server():
            on = run_stream(world, tmp, "on", True, args.destinations, args.parallel)
            try:
                off = run_stream(world, tmp, "off", False, args.destinations, args.parallel)
                try:
                    print()
                    print(
                        f"## cached lookups, 10 connections, {args.seconds:g} s each, "
                        "alternating which goes first (the machine is shared)"
                    )
                    rates: dict[str, list[float]] = {"fleet on ": [], "fleet off": []}
                    pair = [("fleet on ", on), ("fleet off", off)]
                    for i in range(ROUNDS):
                        for name, run in pair if i % 2 == 0 else pair[::-1]:  # either first
                            target = f"inet:127.0.0.1:{run.hosts[0].tcp_port}"
                            fig = run_clients(target, "postfix", run.keys, 10, args.seconds)
                            rates[name].append(fig.rate)
                            print(
                                f"{name}  {fig.rate:9,.0f}/s  p50 {fig.p50_us:6.0f} us  "
                                f"p99 {fig.p99_us:6.0f} us  errors {fig.errors}"
                            )
                    for name, got in rates.items():
                        print(f"{name}  median {statistics.median(got):9,.0f}/s")
                finally:
                    off.stop()
            finally:
                on.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

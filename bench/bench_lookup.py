"""Cached-lookup benchmark for policyd: rate and latency at 1, 10 and 100 connections, RSS.

Starts a real policyd (SQLite store in a temporary directory), gives it 100,000
destinations through the control socket (overrides, so no DNS is involved and the figures
measure the socketmap hot path), looks every one of them up once so the answers are
cached, then measures. Each connection does one lookup at a time, as Postfix does.

    .venv/bin/python bench/bench_lookup.py [--seconds 5] [--destinations 100000]

With ``--in-process`` it measures only the hot path itself, without a daemon or a client:
CPU time per cached lookup through the socketmap connection's ``data_received`` on a fake
transport. CPU time, best of several rounds, so that it compares two versions fairly on a
machine other work is loading (the end-to-end figures swing with that load).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import cpu_count, rss_kib, run_clients, run_postmap
from policyd.codec import control, netstring
from policyd.codec.destination import parse_key
from policyd.codec.postfix_policy import parse
from policyd.config import ServerSettings
from policyd.core.evidence import Override
from policyd.core.profile import DEFAULT_PROFILES
from policyd.server.socketmap import SocketmapServer, _Conn
from policyd.service import PolicyService
from tests.daemon import Daemon, base_sections
from tests.fakes import FakeDane, FakeProbe, FakeSts, FakeTransport, MemoryStore, run_ready

CONNECTIONS = (1, 10, 100)
LEVELS = ("encrypt", "verify", "may", "dane-only", "secure match=.example.net")


def set_overrides(control_path: str, count: int) -> None:
    """One control connection, requests pipelined in batches."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(control_path)
    decoder = control.reply_decoder()
    batch = 500
    for start in range(0, count, batch):
        lines = []
        for i in range(start, min(count, start + batch)):
            req = control.OverrideSet(
                parse_key(f"d{i}.bench.example"), parse(LEVELS[i % len(LEVELS)])
            )
            lines.append(control.encode_request(req))
        sock.sendall(b"".join(lines))
        got = 0
        while got < len(lines):
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("control socket closed")
            decoder.receive_data(data)
            while True:
                msg = decoder.next_message()
                if msg is control.NEED_DATA:
                    break
                if not isinstance(msg, control.Ok):
                    raise RuntimeError(f"override failed: {msg}")
                got += 1
    sock.close()


IN_PROCESS_KEYS = 1000  # distinct cached destinations asked in turn
IN_PROCESS_PASSES = 100  # passes over them per round
IN_PROCESS_ROUNDS = 15  # rounds; the best (least disturbed) one is reported


async def hot_path_cpu_ns() -> float:
    """CPU nanoseconds per cached lookup through _Conn.data_received (best round)."""
    service = PolicyService(
        DEFAULT_PROFILES, MemoryStore(), FakeDane(), FakeSts(), FakeProbe(), lookup_budget=1.0
    )
    conn = _Conn(SocketmapServer(service, ServerSettings()))
    transport = FakeTransport()
    conn.connection_made(transport)
    keys = [f"d{i}.bench.example" for i in range(IN_PROCESS_KEYS)]
    for i, key in enumerate(keys):
        await service.set_override(Override(key, parse(LEVELS[i % len(LEVELS)])))
    requests = [netstring.encode(f"postfix {key}".encode()) for key in keys]
    for req in requests:  # the first pass fills the cache
        conn.data_received(req)
    await run_ready()
    transport.written.clear()
    best = float("inf")
    for _ in range(IN_PROCESS_ROUNDS):
        started = time.process_time()
        for _ in range(IN_PROCESS_PASSES):
            for req in requests:
                conn.data_received(req)
        best = min(best, time.process_time() - started)
        assert len(transport.written) == IN_PROCESS_PASSES * IN_PROCESS_KEYS, "not all hits"
        transport.written.clear()
    return best / (IN_PROCESS_PASSES * IN_PROCESS_KEYS) * 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    ap.add_argument("--destinations", type=int, default=100_000)
    ap.add_argument("--in-process", action="store_true", help="the hot path alone, CPU time")
    args = ap.parse_args()
    if args.in_process:
        ns = asyncio.run(hot_path_cpu_ns())
        print(f"hot path in process: {ns:.0f} ns CPU per cached lookup (data_received, best round)")
        return 0
    if shutil.which("postmap") is None:
        print("postmap not found: apt-get install postfix (make test does)", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="policyd-bench-"))
    sections = base_sections(directory, "127.0.0.1")
    sections["probe"] = {"enabled": False}
    sections["log"] = {"level": "warning"}
    daemon = Daemon(directory, sections)
    daemon.start()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        print(
            f"machine: {platform.machine()}, {cpu_count()} cores, Python {sys.version.split()[0]}"
        )
        print(f"RSS after start: {rss_kib(pid) / 1024:.1f} MiB")
        set_overrides(daemon.control, args.destinations)
        keys = [f"d{i}.bench.example" for i in range(args.destinations)]
        # one pass over every key so each answer is cached
        answered, secs = run_postmap(f"socketmap:unix:{daemon.socket}:postfix", keys, 10)
        print(
            f"RSS after {args.destinations} cached destinations: {rss_kib(pid) / 1024:.1f} MiB"
            f" (first pass: {answered} answers in {secs:.1f}s)"
        )
        hot = keys[:1000]
        print(f"\ncached lookups, {args.seconds:g}s each, one lookup at a time per connection")
        print(f"{'conns':>6} {'lookups/s':>10} {'p50 us':>8} {'p99 us':>8} {'errors':>6}")
        for conns in CONNECTIONS:
            fig = run_clients(f"unix:{daemon.socket}", "postfix", hot, conns, args.seconds)
            print(
                f"{conns:>6} {fig.rate:>10.0f} {fig.p50_us:>8.0f} {fig.p99_us:>8.0f}"
                f" {fig.errors:>6}"
            )
        print("\npostmap -q - (Postfix's own client), 10 parallel processes, 20,000 keys each")
        many = (hot * 200)[:200_000]
        answered, secs = run_postmap(f"socketmap:unix:{daemon.socket}:postfix", many, 10)
        print(f"  {answered} answers in {secs:.2f}s = {answered / secs:.0f} lookups/s")
        print(f"RSS at the end: {rss_kib(pid) / 1024:.1f} MiB")
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())

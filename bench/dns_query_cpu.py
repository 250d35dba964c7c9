"""CPU time of policyd's process per DNS query on the cold path, without the test world.

``Resolver.query`` for never-seen names (each one asked once, so nothing comes from the
cache or joins another lookup), ``--concurrency`` at a time, against a small responder in
another process (its CPU is not counted) that answers every A query with one address.
Steadier than the rate of bench/cold_lookups.py on a shared machine: only this process's
CPU time counts, and the best and the median of several runs are printed. No root needed.
It imports the policyd beside it (a copy of the tree at another commit measures that one).

    .venv/bin/python bench/dns_query_cpu.py [--queries 10000] [--concurrency 20] [--runs 6]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

import dns.flags
import dns.message
import dns.rrset

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from policyd.adapters.dns import Resolver  # noqa: E402
from policyd.settings import DnsSettings  # noqa: E402

ADDRESS: Final = "192.0.2.1"  # the one address of every name
WARM: Final = 8  # lookups that open the UDP sockets before the measured ones


def responder(port: mp.Queue[int]) -> None:
    """Answer every query with an A record (AD set), forever."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port.put(sock.getsockname()[1])
    while True:
        data, addr = sock.recvfrom(2048)
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AD
        reply.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", ADDRESS))
        sock.sendto(reply.to_wire(), addr)


async def one_run(port: int, queries: int, concurrency: int, run: int) -> float:
    """CPU microseconds of this process per query."""
    settings = DnsSettings(nameservers=("127.0.0.1",), port=port, cache_entries=queries * 2)
    resolver = Resolver(settings)
    await asyncio.gather(*(resolver.query(f"warm{i}.r{run}.test", "A") for i in range(WARM)))

    async def worker(w: int) -> None:
        for i in range(queries // concurrency):
            answer = await resolver.query(f"w{w}-{i}.r{run}.test", "A")
            if answer.texts != (ADDRESS,):
                raise RuntimeError(f"unexpected answer: {answer}")

    start = time.process_time()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    used = time.process_time() - start
    resolver.close()
    return used / (queries // concurrency * concurrency) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--runs", type=int, default=6)
    args = ap.parse_args(argv)
    ports: mp.Queue[int] = mp.Queue()
    server = mp.Process(target=responder, args=(ports,), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=10)
        run: Callable[[Coroutine[Any, Any, float]], float] = asyncio.run
        try:
            import uvloop

            run = uvloop.run
        except ImportError:  # as the daemon: the stock loop when uvloop is missing
            pass
        got = [run(one_run(port, args.queries, args.concurrency, r)) for r in range(args.runs)]
    finally:
        server.kill()
    where = f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs"
    print(f"# DNS query CPU: {where}; {args.queries} never-seen names x {args.runs} runs")
    print(
        f"policyd  {min(got):6.1f} us CPU per query (best), "
        f"{statistics.median(got):6.1f} (median), concurrency {args.concurrency}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

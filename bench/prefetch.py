"""Known destinations never wait (issue 14 point 2): Zipf-distributed lookups over 10,000
destinations whose DNS records live 60 s, for 10 minutes; prints the share answered from
memory, the latency and the refreshes (``[server] prefetch``).

Builds the test world (network namespace, signed bind9 tree, validating unbound: needs
root) with the ``bench.prefetch_world`` zone: every ``z<n>.known.test`` has its own MX host
with A, AAAA and TLSA records (a dane-only answer), every record with a 60 s TTL. The
world's unbound caps its cache at 30 s for the tests; here it is restarted with the caps
lifted, so that it hands out the zone's own 60 s, and with unbound's ``prefetch: yes``
unless ``--no-unbound-prefetch`` (policyd can be no fresher than its resolver: without it
unbound keeps the old record until it expires). policyd runs with ``[dns] min_ttl = 0`` so
that its DNS cache does not lift the TTLs either.

Every destination is looked up once (so all are known), in a random order spread over one
TTL (answers cached all at once would expire, and be refreshed, all at once), then
``bench/c/loadgen.c`` asks a seeded Zipf (s = 1) sequence of them over ``--connections``
closed-loop connections for one TTL to settle (not recorded: the answers warmed in the
first seconds of the warm-up expire then, not refreshed, since nothing asked for them in
their last tenth) and then ``--seconds``. The share answered from memory is the daemon's
own count (hits against misses and TEMPs, from its metrics before and after); the latency
is the client's, paced from when each lookup was due (the issue's figure) and also from
when it was written: a connection asks one lookup at a time, as Postfix does, so a lookup
due while its connection waits for a slow one (a miss) waits too, and the second figure
leaves that wait out. Figures only, no assertions.

    .venv/bin/python bench/prefetch.py [--seconds 600] [--prefetch 0.1] [--connections 10]
        [--rate N] [--pin] [--client-rt]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import prefetch_world  # noqa: E402
from bench.client import lookups  # noqa: E402
from bench.harness import (  # noqa: E402
    Running,
    bench_world,
    is_root,
    machine,
    pin,
    start_policyd,
)
from bench.hot_path import C_SOURCES, LOADGEN_SLACK, MAP_NAME  # noqa: E402
from tests.daemon import base_sections, free_port  # noqa: E402
from tests.world.world import World  # noqa: E402

DESTINATIONS: Final = prefetch_world.DESTINATIONS
TTL: Final = 60.0  # seconds, of every record in the zone (tests/world/dns.py)
ZIPF_S: Final = 1.0
SEED: Final = 14
# Lookups in the key file loadgen cycles through: enough that the cycle does not show.
SEQUENCE: Final = 2_000_000
SAMPLE_EVERY: Final = 10.0  # seconds between the counter lines printed during the run
# SCHED_FIFO priority of the load generator with --client-rt (any real-time priority above
# the normal processes' does; the kernel still keeps 5% of each second for them).
CLIENT_RT_PRIORITY: Final = 50
# Issue 14 point 2.
TARGET_SHARE: Final = 0.999
TARGET_P99_US: Final = 1000.0
# unbound.conf lines of the test world replaced for the bench (tests/world/nameservers.py).
UNBOUND_CAPS: Final = (
    (re.compile(r"cache-max-ttl: \d+"), "cache-max-ttl: 86400"),
    (re.compile(r"cache-max-negative-ttl: \d+"), "cache-max-negative-ttl: 3600"),
)
COUNTERS: Final = re.compile(
    r'^policyd_(lookups|prefetches)_total\{result="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE
)


def keys() -> list[str]:
    return [prefetch_world.destination(i) for i in range(DESTINATIONS)]


def zipf_sequence(names: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` names drawn with probability proportional to 1 / rank**ZIPF_S; the ranks
    are shuffled over the names (seeded), so rank and spelling are unrelated."""
    rng = random.Random(seed)
    ranked = list(names)
    rng.shuffle(ranked)
    weights = [1 / (rank**ZIPF_S) for rank in range(1, len(ranked) + 1)]
    return rng.choices(ranked, weights=weights, k=count)


def resolver_as_deployed(world: World, prefetch: bool) -> None:
    """unbound with the zone's own TTLs (and its prefetch), restarted with an empty cache."""
    conf = world.unbound.conf
    text = conf.read_text()
    for pattern, line in UNBOUND_CAPS:
        text = pattern.sub(line, text)
    if prefetch:
        text = text.replace("    num-threads: 1\n", "    num-threads: 1\n    prefetch: yes\n")
    conf.write_text(text)
    world.restart_unbound()


def policyd(world: World, directory: Path, fraction: float, metrics_port: int) -> Running:
    sections = base_sections(directory, world.resolver)
    sections["server"]["prefetch"] = fraction
    sections["probe"] = {"enabled": False}
    sections["dns"] = {"nameservers": [world.resolver], "min_ttl": 0}  # TTLs as published
    sections["log"] = {"level": "warning"}
    sections["metrics"] = {"listen": f"inet:127.0.0.1:{metrics_port}"}
    return start_policyd(world, directory, sections)


def counters(metrics_port: int) -> dict[str, float]:
    """policyd's lookup and prefetch counters, as ``lookups.hit``, ``prefetches.started``..."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f"{m[1]}.{m[2]}": float(m[3]) for m in COUNTERS.finditer(text)}


def compile_loadgen(directory: Path) -> Path:
    out = directory / "loadgen"
    source = C_SOURCES / "loadgen.c"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(out), str(source)], check=True)
    return out


def measure(
    binary: Path,
    port: int,
    keyfile: Path,
    connections: int,
    seconds: float,
    settle: float,
    metrics_port: int,
    rate: float = 0.0,
    realtime: bool = False,
) -> tuple[dict[str, str], dict[str, float]]:
    """One loadgen run of ``settle`` + ``seconds``, recording only the last ``seconds``; a
    line of the daemon's counters every SAMPLE_EVERY seconds meanwhile (where the misses
    fall in time); with ``realtime``, loadgen runs at a real-time priority. Returns what
    loadgen printed and the counters when the recording began."""
    cmd = [str(binary), "-t", f"inet:127.0.0.1:{port}", "-k", str(keyfile), "-n", MAP_NAME]
    cmd += ["-c", str(connections), "-s", str(seconds), "-w", str(settle)]
    if rate > 0:
        cmd += ["-r", str(rate)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if realtime:
        try:
            os.sched_setscheduler(proc.pid, os.SCHED_FIFO, os.sched_param(CLIENT_RT_PRIORITY))
        except OSError as exc:  # a container without real-time time, say
            proc.kill()
            proc.wait()
            raise RuntimeError(f"--client-rt: no real-time priority for loadgen: {exc}") from exc
    started = time.monotonic()
    last = counters(metrics_port)
    at_settle = last if not settle else {}
    tick = 0
    while proc.poll() is None:
        tick += 1
        time.sleep(max(0.0, started + tick * SAMPLE_EVERY - time.monotonic()))
        if proc.poll() is not None:
            break
        now = counters(metrics_port)
        print(f"  {tick * SAMPLE_EVERY:5.0f} s  {interval(last, now)}", flush=True)
        if not at_settle and tick * SAMPLE_EVERY >= settle:
            at_settle = now
        last = now
    out, err = proc.communicate(timeout=LOADGEN_SLACK)
    if proc.returncode != 0 or not at_settle:
        raise RuntimeError(f"loadgen: {err.strip()}")
    return dict(item.split("=", 1) for item in out.split()), at_settle


def interval(before: dict[str, float], after: dict[str, float]) -> str:
    d = {name: int(after.get(name, 0.0) - before.get(name, 0.0)) for name in after}
    return (
        f"hits {d.get('lookups.hit', 0):>9,}  misses {d.get('lookups.miss', 0):>6,}  "
        f"prefetches {d.get('prefetches.started', 0):>6,} started "
        f"{d.get('prefetches.skipped', 0):>5,} skipped {d.get('prefetches.failed', 0):>4,} failed"
    )


async def spread(port: int, names: Sequence[str], seconds: float, seed: int) -> int:
    """Every name looked up once, in a random order, evenly over ``seconds``: answers
    cached at once would all expire, and be refreshed, at once every TTL (a herd no mail
    host sees). Returns how many answers were not OK or NOTFOUND."""
    order = list(names)
    random.Random(seed + 1).shuffle(order)
    step = seconds / len(order)

    async def one(i: int, name: str) -> bool:
        await asyncio.sleep(i * step)
        ((got, _),) = await lookups(port, [name])
        return got.startswith(("OK", "NOTFOUND"))

    answered = await asyncio.gather(*(one(i, name) for i, name in enumerate(order)))
    return answered.count(False)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--prefetch", type=float, default=0.1, help="[server] prefetch; 0: off")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--no-unbound-prefetch", action="store_true")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="policyd alone on the last CPU; the load generator, unbound, named and this "
        "script on the others (a diagnosis: how much of the tail is waiting for a CPU)",
    )
    ap.add_argument(
        "--client-rt",
        action="store_true",
        help="the load generator at a real-time priority (SCHED_FIFO), so that it writes "
        "each lookup when due rather than when a CPU is free of the daemon, unbound and "
        "named (a diagnosis: the latency without the client's own lateness)",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="lookups/s over all connections, paced (an open loop); 0: closed loop, flat out",
    )
    args = ap.parse_args(argv)
    if not is_root():
        return 2
    with bench_world("policyd-prefetch-", "bench.prefetch_world") as bench:
        world, tmp, daemons = bench.world, bench.dir, bench.daemons
        resolver_as_deployed(world, not args.no_unbound_prefetch)
        binary = compile_loadgen(tmp)
        names = keys()
        sequence = tmp / "zipf.txt"
        sequence.write_text("".join(f"{k}\n" for k in zipf_sequence(names, SEQUENCE, args.seed)))
        (tmp / "policyd").mkdir()
        metrics_port = free_port()
        daemon = policyd(world, tmp / "policyd", args.prefetch, metrics_port)
        daemons.append(daemon)
        pinning = ""
        if args.pin and len(os.sched_getaffinity(0)) >= 2:
            alone = max(os.sched_getaffinity(0))
            others = os.sched_getaffinity(0) - {alone}
            pin(daemon.pid, {alone})
            for proc in (world.unbound.proc.proc, world.named.proc.proc):
                if proc is not None:
                    pin(proc.pid, others)
            pin(os.getpid(), others)  # and so the load generator it starts
            pinning = f"; policyd alone on CPU {alone}, everything else on {sorted(others)}"
        unbound = "prefetch: no" if args.no_unbound_prefetch else "prefetch: yes"
        realtime = ""
        if args.client_rt:
            realtime = f"; load generator at SCHED_FIFO priority {CLIENT_RT_PRIORITY}"
        print(f"# known destinations never wait (issue 14 point 2); {machine()}")
        print(
            f"# {DESTINATIONS:,} destinations z<n>.{prefetch_world.ZONE} (signed MX, A, AAAA, "
            "TLSA), "
            f"every record 60 s TTL; unbound {unbound}; policyd [server] prefetch "
            f"{args.prefetch:g}, [dns] min_ttl 0"
        )
        pace = f"paced at {args.rate:,.0f} lookups/s" if args.rate > 0 else "closed-loop"
        print(
            f"# Zipf s={ZIPF_S:g} (seed {args.seed}), {args.connections} connections {pace}"
            f" (bench/c/loadgen.c) over TCP, {TTL:g} s to settle (not recorded), "
            f"then {args.seconds:g} s; "
            f"load average before: {load_average()}{pinning}{realtime}",
            flush=True,
        )
        started = time.monotonic()
        errors = asyncio.run(spread(daemon.port, names, TTL, args.seed))
        print(
            f"warm-up: {len(names):,} first lookups spread over {time.monotonic() - started:.0f} s"
            f" (one TTL, random order, so that expiries are spread as in a steady state), "
            f"errors {errors}",
            flush=True,
        )
        got, before = measure(
            binary,
            daemon.port,
            sequence,
            args.connections,
            args.seconds,
            TTL,
            metrics_port,
            args.rate,
            args.client_rt,
        )
        after = counters(metrics_port)
        print(report(got, before, after, load_average()))
    return 0


def report(
    got: dict[str, str], before: dict[str, float], after: dict[str, float], load: str
) -> str:
    delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    hits = delta.get("lookups.hit", 0.0)
    slow = delta.get("lookups.miss", 0.0) + delta.get("lookups.temp", 0.0)
    share = hits / (hits + slow) if hits + slow else 0.0
    p99 = float(got["p99_us"])
    lines = [
        f"lookups: {int(got['count']):,} in {float(got['seconds']):.0f} s "
        f"({float(got['rate']):,.0f}/s), errors (TEMP or worse) {got['errors']}",
        f"answered from memory: {share:.4%} ({int(hits):,} hits, {int(slow):,} from the slow "
        f"path: {int(delta.get('lookups.miss', 0)):,} misses, "
        f"{int(delta.get('lookups.temp', 0)):,} TEMP)  target {TARGET_SHARE:.1%}: "
        f"{'met' if share >= TARGET_SHARE else 'MISSED'}",
        f"latency: p50 {float(got['p50_us']):.0f} us, p99 {p99:.0f} us, "
        f"p99.9 {float(got['p999_us']):.0f} us, max {float(got['max_us']) / 1000:.1f} ms  "
        f"target p99 < {TARGET_P99_US / 1000:g} ms: {'met' if p99 < TARGET_P99_US else 'MISSED'}",
        f"  the same lookups timed from their write instead: p50 {float(got['sent_p50_us']):.0f} "
        f"us, p99 {float(got['sent_p99_us']):.0f} us, p99.9 {float(got['sent_p999_us']):.0f} us; "
        f"written over 1 ms late: {int(got['held']):,} held behind their connection's "
        f"previous lookup, {int(got['client_late']):,} by the load generator itself",
        f"prefetches: {int(delta.get('prefetches.started', 0)):,} started, "
        f"{int(delta.get('prefetches.skipped', 0)):,} skipped (limit), "
        f"{int(delta.get('prefetches.failed', 0)):,} failed",
        f"load average after: {load}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

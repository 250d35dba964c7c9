"""Head-to-head: policyd against postfix-mta-sts-resolver (the peer) on the same test world.

Builds the test world (network namespace, signed DNS, MTA-STS HTTPS servers: needs root),
starts policyd and the peer against it, and prints for both:

* where their answers differ over the MTA-STS test cases (with the RFC reason when policyd
  differs on purpose);
* cold-lookup latency for MTA-STS domains (nothing cached: TXT, fetch, answer);
* RSS after start and after N cached domains (``<label>.bulk.test``: wildcard MX/TXT/A, a
  certificate per SNI name issued on the fly by the world's policy server, so each daemon
  fills names of its own: with one list, the daemon filled second found every certificate
  issued already and its fill cost the policy server a fraction of the first one's);
* cached-lookup rate and p50/p99 at 1, 10 and 100 connections, one lookup at a time per
  connection (bench/client.py), over TCP for both daemons.

Figures only, no assertions.  The peer lives in ``bench/peer-venv`` (installed from PyPI
when missing) and runs under ``ip netns exec`` (its resolver reads the namespace's
resolv.conf) with ``SSL_CERT_FILE`` set to the world's CA.  policyd runs the same way (its
policy fetcher resolves through the system resolver too).

    .venv/bin/python bench/head_to_head.py [--domains 20000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.client import Figures, many, rss_kib, run_clients, show  # noqa: E402
from bench.harness import Running, bench_world, is_root, machine, start_policyd, wait_port  # noqa: E402
from tests.daemon import base_sections, free_port  # noqa: E402
from tests.world import sts_world  # noqa: E402
from tests.world.world import World  # noqa: E402

PEER_VENV: Final = ROOT / "bench" / "peer-venv"
PEER_BIN: Final = PEER_VENV / "bin" / "mta-sts-daemon"
PEER_PACKAGE: Final = "postfix-mta-sts-resolver"
CONNECTIONS: Final = (1, 10, 100)
WARM_CONCURRENCY: Final = 200  # connections used to fill the caches
COLD_SAMPLES: Final = 50  # fresh bulk domains for the cold-latency figure
COLD_BUDGET: Final = 3.0  # policyd [sts] cold_budget
MIN_TTL: Final = 3600  # policyd [dns] min_ttl (see policyd)
PEER_TIMEOUT: Final = 4  # the peer's per-zone fetch timeout (its default)

# Where policyd answers differently from the peer on purpose: domain -> reason.
WHY_DIFFERENT: Final = {
    "dane-sts.test": "DANE outranks MTA-STS (RFC 8461 2): policyd answers dane-only",
    "sts-slow.test": "policyd answers within its cold budget (RFC 8461 3.3 leaves the "
    "timeout to the sender; Postfix's socketmap waits 100 s)",
}


# -- the two daemons ------------------------------------------------------------------------


def ensure_peer() -> None:
    if PEER_BIN.exists():
        return
    print(f"installing {PEER_PACKAGE} into {PEER_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    pip = PEER_VENV / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", PEER_PACKAGE], check=True)


def peer_version() -> str:
    res = subprocess.run(
        [str(PEER_VENV / "bin" / "python"), "-m", "pip", "show", PEER_PACKAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in res.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split()[1]
    return "?"


def policyd(world: World, directory: Path, cache_entries: int) -> Running:
    sections = base_sections(directory, world.resolver)
    sections["probe"] = {"enabled": False}
    sections["tls"] = {"ca_file": str(world.ca_file)}
    sections["sts"] = {"cold_budget": COLD_BUDGET, "max_concurrent_fetches": 64}
    sections["dns"]["cache_entries"] = max(100_000, 4 * cache_entries)
    # The world's zones have 60 s TTLs (unbound caps at 30 s) and policyd keeps an answer no
    # longer than its DNS evidence: without this, answers filled minutes ago would be
    # rebuilt (DNS round trips) during the "cached" runs. Real MX TTLs are hours.
    sections["dns"]["min_ttl"] = MIN_TTL
    sections["log"] = {"level": "warning"}
    return start_policyd(world, directory, sections)


def start_peer(world: World, directory: Path, cache_entries: int) -> Running:
    port = free_port()
    config = directory / "mta-sts-daemon.yml"
    config.write_text(
        f"""\
host: 127.0.0.1
port: {port}
reuse_port: true
shutdown_timeout: 5
# Within cache_grace a cached policy is answered without a TXT re-check: large, so that
# its cached path is pure cache, like policyd's.
cache_grace: 86400
cache:
  type: internal
  options:
    cache_size: {cache_entries + 1000}
default_zone:
  strict_testing: false
  timeout: {PEER_TIMEOUT}
"""
    )
    log = directory / "peer.log"
    env = {**os.environ, "SSL_CERT_FILE": str(world.ca_file)}
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [*world.exec_prefix(), str(PEER_BIN), "-c", str(config), "-v", "warn"],
            stdout=fh,
            stderr=fh,
            env=env,
            start_new_session=True,
        )
    wait_port(port, proc, log)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    return Running("peer", port, proc.pid, stop)


# -- the measurements -------------------------------------------------------------------------


def compare_cases(daemons: Sequence[Running]) -> list[tuple[str, list[str], list[float]]]:
    """Every MTA-STS case domain (cold, then again once fetches settled)."""
    domains = [sts_world.domain_of(c.label) for c in sts_world.CASES] + ["dane-sts.test"]
    rows: list[tuple[str, list[str], list[float]]] = []
    cold: dict[str, dict[str, tuple[str, float]]] = {}
    for d in daemons:
        cold[d.name] = many(d.port, domains, len(domains))
    time.sleep(PEER_TIMEOUT + 1.0)
    warm = {d.name: many(d.port, domains, len(domains)) for d in daemons}
    for domain in domains:
        answers = [
            f"{show(cold[d.name][domain][0])} / {show(warm[d.name][domain][0])}"
            if show(cold[d.name][domain][0]) != show(warm[d.name][domain][0])
            else show(warm[d.name][domain][0])
            for d in daemons
        ]
        rows.append((domain, answers, [cold[d.name][domain][1] for d in daemons]))
    return rows


def fill(d: Running, keys: Sequence[str]) -> tuple[float, int]:
    """Look every key up until each one has its policy (cold fetches past policyd's budget
    finish in the background). Returns (seconds, keys still without a policy)."""
    t0 = time.perf_counter()
    todo = list(keys)
    for _ in range(5):
        got = many(d.port, todo, WARM_CONCURRENCY)
        todo = [k for k in todo if not got[k][0].startswith("OK secure")]
        if not todo:
            break
        time.sleep(2.0)
    return time.perf_counter() - t0, len(todo)


def fmt_fig(f: Figures) -> str:
    return f"{f.rate:>9,.0f}/s  p50 {f.p50_us:>7.0f} us  p99 {f.p99_us:>7.0f} us  err {f.errors}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--domains", type=int, default=20_000, help="cached domains for RSS")
    ap.add_argument("--seconds", type=float, default=5.0, help="per rate measurement")
    args = ap.parse_args(argv)
    if not is_root():
        return 2
    ensure_peer()
    bulk = [f"d{i}.{sts_world.BULK}" for i in range(args.domains)]
    cold_keys = [f"cold{i}.{sts_world.BULK}" for i in range(COLD_SAMPLES)]
    # Only the MTA-STS extension: the SMTP servers play no part here.
    with bench_world("policyd-h2h-", "tests.world.sts_world") as bench:
        world, tmp, daemons = bench.world, bench.dir, bench.daemons
        (tmp / "policyd").mkdir()
        (tmp / "peer").mkdir()
        daemons.append(policyd(world, tmp / "policyd", args.domains))
        daemons.append(start_peer(world, tmp / "peer", args.domains))
        time.sleep(1.0)
        rss_start = {d.name: rss_kib(d.pid) for d in daemons}
        own = {d.name: [f"{d.name}-{k}" for k in bulk] for d in daemons}

        print(f"# head-to-head: policyd vs {PEER_PACKAGE} {peer_version()}")
        print(
            f"# {machine()}; both over TCP on 127.0.0.1 in the "
            "test world's namespace; peer: internal cache, cache_grace 86400 s; "
            f"policyd: [dns] min_ttl {MIN_TTL} s"
        )
        print()
        print("## answers over the MTA-STS test cases (cold / after the fetch settled)")
        rows = compare_cases(daemons)
        width = max(len(r[0]) for r in rows)
        print(f"{'domain':<{width}}  {'same':<4}  policyd | peer")
        for domain, answers, _ in rows:
            same = answers[0] == answers[1]
            print(f"{domain:<{width}}  {'yes' if same else 'NO':<4}  {answers[0]} | {answers[1]}")
        diffs = [r for r in rows if r[1][0] != r[1][1]]
        print()
        print("## where they differ, and why")
        if not diffs:
            print("(no differences)")
        for domain, answers, _ in diffs:
            why = WHY_DIFFERENT.get(domain, "(not an intended difference: investigate)")
            print(f"{domain}: policyd {answers[0]!r}, peer {answers[1]!r}: {why}")
        print()

        print(f"## cold lookup (nothing cached), {COLD_SAMPLES} fresh bulk domains, sequential")
        for d in daemons:
            got = many(d.port, [f"{d.name}-{k}" for k in cold_keys], 1)
            times = sorted(t for _, t in got.values())
            ok = sum(1 for a, _ in got.values() if a.startswith("OK secure"))
            print(
                f"{d.name:<8} median {statistics.median(times) * 1000:7.1f} ms  "
                f"max {times[-1] * 1000:7.1f} ms  with policy {ok}/{len(times)}"
            )
        enforce = {d.name: r[2][i] for i, d in enumerate(daemons) for r in rows[:1]}
        print(
            "sts-enforce.test (first lookup of the case run): "
            + ", ".join(f"{n} {t * 1000:.1f} ms" for n, t in enforce.items())
        )
        print()

        print(f"## filling the caches with {args.domains:,} bulk domains")
        for d in daemons:
            secs, missing = fill(d, own[d.name])
            print(f"{d.name:<8} {secs:6.1f} s, {missing} without policy")
        time.sleep(1.0)
        rss_full = {d.name: rss_kib(d.pid) for d in daemons}
        print()
        print("## RSS")
        for d in daemons:
            print(
                f"{d.name:<8} after start {rss_start[d.name] / 1024:7.1f} MiB   after "
                f"{args.domains:,} cached domains {rss_full[d.name] / 1024:7.1f} MiB"
            )
        print()

        print(f"## cached lookups ({args.seconds:g} s per run, keys spread over the bulk set)")
        figures: dict[tuple[str, int], Figures] = {}
        for conns in CONNECTIONS:
            for d in daemons:
                keys = own[d.name]
                fig = run_clients(f"inet:127.0.0.1:{d.port}", "postfix", keys, conns, args.seconds)
                figures[(d.name, conns)] = fig
                print(f"{d.name:<8} {conns:>3} conn  {fmt_fig(fig)}")
        print()

        print("## targets")
        for conns in (10, 100):
            ours, peer = figures[("policyd", conns)], figures[("peer", conns)]
            ratio = ours.rate / peer.rate if peer.rate else float("inf")
            print(
                f"rate x{ratio:.1f} at {conns} conn (target >= 3x): "
                f"{'met' if ratio >= 3 else 'NOT met'}; p99 {ours.p99_us:.0f} vs "
                f"{peer.p99_us:.0f} us: {'met' if ours.p99_us <= peer.p99_us else 'NOT met'}"
            )
        rss_ok = rss_full["policyd"] <= rss_full["peer"]
        print(f"RSS after fill: {'met' if rss_ok else 'NOT met'}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cold lookups: every lookup a never-seen destination, half NXDOMAIN, half existing names
with an implicit MX, at 20 connections (one lookup at a time each, as Postfix does).

Builds the test world (network namespace, signed bind9 tree, validating unbound: needs
root) with the ``bench.cold_world`` zones, starts policyd (and, unless ``--no-peer``, the
peer postfix-mta-sts-resolver as bench/head_to_head.py does) and prints lookups/s, p50,
p99 and the errors (TEMP or worse) per daemon. Each daemon gets names of its own, so
neither finds the other's in unbound's cache. Figures only, no assertions.

CPU per lookup (the scheduler's count over the run, divided by the lookups) is printed for
the daemon and for the resolvers behind it (unbound, and named as its authority): steadier
than the rate on a shared machine, and it shows what each daemon's queries cost the
resolver. ``--profile FILE`` runs policyd under cProfile and writes its stats there.

    .venv/bin/python bench/cold_lookups.py [--seconds 10] [--connections 20] [--no-peer]
        [--profile FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cold_world  # noqa: E402
from bench.client import Figures, rss_kib, run_clients  # noqa: E402
from bench.harness import Running, bench_world, is_root, machine, start_policyd  # noqa: E402
from bench.head_to_head import PEER_PACKAGE, ensure_peer, peer_version, start_peer  # noqa: E402
from bench.hot_path import cpu_ns  # noqa: E402
from tests.daemon import base_sections  # noqa: E402
from tests.world.world import World  # noqa: E402

# Lookups per second can reach a few thousand: enough never-seen names that no connection
# wraps around to a name it asked before (bench/client.py cycles through its share).
KEYS_PER_SECOND: Final = 12_000


# Imported first by the profiled daemon's interpreter (PYTHONPATH): profiles the whole
# process and writes the stats when it exits (SIGTERM ends policyd's loop normally).
PROFILER: Final = """\
import atexit, cProfile, os
_out = os.environ.pop("POLICYD_BENCH_PROFILE", None)
if _out:
    _profile = cProfile.Profile()
    _profile.enable()
    atexit.register(lambda: (_profile.disable(), _profile.dump_stats(_out)))
"""


def policyd(world: World, directory: Path, profile: Path | None) -> Running:
    sections = base_sections(directory, world.resolver)
    sections["probe"] = {"enabled": False}
    sections["dns"] = {"nameservers": [world.resolver]}  # default timeouts
    sections["log"] = {"level": "warning"}
    if profile is None:
        return start_policyd(world, directory, sections)
    hook = Path(tempfile.mkdtemp(prefix="policyd-profile-"))
    (hook / "sitecustomize.py").write_text(PROFILER)
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(hook), saved.get("PYTHONPATH", "")) if p
    )
    os.environ["POLICYD_BENCH_PROFILE"] = str(profile.resolve())
    try:
        return start_policyd(world, directory, sections)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        # The daemon imported the hook when its interpreter started (it is up now).
        shutil.rmtree(hook, ignore_errors=True)


def fmt(f: Figures) -> str:
    return (
        f"{f.rate:>8,.0f} lookups/s  p50 {f.p50_us / 1000:7.2f} ms  "
        f"p99 {f.p99_us / 1000:7.2f} ms  errors {f.errors}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--no-peer", action="store_true", help="policyd only")
    ap.add_argument("--profile", type=Path, help="cProfile stats of policyd to this file")
    args = ap.parse_args(argv)
    if not is_root():
        return 2
    peer = not args.no_peer
    if peer:
        try:
            ensure_peer()
        except Exception as exc:
            print(f"# peer unavailable ({exc}); policyd only", flush=True)
            peer = False
    with bench_world("policyd-cold-", "bench.cold_world") as bench:
        world, tmp, daemons = bench.world, bench.dir, bench.daemons
        (tmp / "policyd").mkdir()
        daemons.append(policyd(world, tmp / "policyd", args.profile))
        if peer:
            (tmp / "peer").mkdir()
            daemons.append(start_peer(world, tmp / "peer", 1_000_000))
        time.sleep(1.0)
        version = f" vs {PEER_PACKAGE} {peer_version()}" if peer else ""
        print(f"# cold lookups: policyd{version}")
        print(
            f"# {machine()}; over TCP on 127.0.0.1 in the test "
            f"world's namespace; {args.connections} connections, {args.seconds:g} s; "
            f"every key never seen: half <n>.{cold_world.NXDOMAIN} (NXDOMAIN), half "
            f"<n>.{cold_world.EXISTING} (implicit MX)"
        )
        count = int(args.seconds * KEYS_PER_SECOND)
        resolvers = {"unbound": world.unbound.proc.proc, "named": world.named.proc.proc}
        for d in daemons:
            keys = cold_world.keys(f"{d.name}-", count)
            pids = {d.name: d.pid, **{k: p.pid for k, p in resolvers.items() if p is not None}}
            before = {k: cpu_ns(pid) for k, pid in pids.items()}
            fig = run_clients(
                f"inet:127.0.0.1:{d.port}", "postfix", keys, args.connections, args.seconds
            )
            used = {k: cpu_ns(pid) - before[k] for k, pid in pids.items()}
            wrapped = " (WRAPPED: some names repeated)" if fig.lookups > count else ""
            print(f"{d.name:<8} {fmt(fig)}  RSS {rss_kib(d.pid) / 1024:.1f} MiB{wrapped}")
            per = "  ".join(f"{k} {ns / 1000 / max(fig.lookups, 1):6.1f}" for k, ns in used.items())
            print(f"{'':<8} CPU us/lookup: {per}  (load {os.getloadavg()[0]:.2f})")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

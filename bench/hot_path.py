"""Hot path against the ideal: policyd's cached answers versus a C epoll socketmap responder.

Issue 14 point 6: policyd's cached rate stays at least 50% of a C epoll responder's at 10
and 100 connections, with p99 under 1 ms at 100.  This script prints those figures in one
run.

* ``bench/c/responder.c``: one thread, epoll, parses each netstring request and answers the
  same fixed reply ("OK secure"); no lookup at all, so the upper bound for a socketmap server.
* ``bench/c/loadgen.c``: closed loop, N connections, one request at a time per connection as
  Postfix does; one thread and epoll so that the client is cheap; records every request's
  latency.  The same binary, key set and duration drive both servers.
* policyd: a real daemon (tests/daemon.py), answers from overrides set through the control
  socket (bench/bench_lookup.py's ``set_overrides``), every key asked once before measuring
  so that each answer is in the reply cache (the status counters, printed, show the hits).

Both are compiled with ``cc -O2`` into a temporary directory at each run (no binaries in the
repository).  Measurements alternate between the two servers (C first in even rounds,
policyd first in odd ones) so that drift in the machine's load hits both alike; the table
gives medians over the rounds with the range, and the ratio is the median of each round's
policyd/C pair.  Transports: loopback TCP (Postfix's usual ``inet:`` and policyd's default
listener) and the unix socket.

CPU pinning (default on, ``--no-pin`` to turn off): the load generator runs on CPU 0 and each
server (every thread of it) on CPU 1.  Both servers answer from one thread, so each gets one
whole core and neither can borrow the client's; unpinned, the scheduler may put client and
server on one core for some runs and not others, which made the figures wander more.  Other
work on the machine is not pinned, so the load average (printed before and after) matters:
on a shared 2-core machine read the figures as ranges.

    .venv/bin/python bench/hot_path.py [--seconds 3] [--rounds 3] [--transport tcp unix]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_lookup import set_overrides  # noqa: E402
from bench.client import control_call, cpu_count  # noqa: E402
from policyd.codec import control  # noqa: E402
from tests.daemon import Daemon, base_sections, free_port  # noqa: E402

C_SOURCES: Final = ROOT / "bench" / "c"
CONNECTIONS: Final = (10, 100)
TRANSPORTS: Final = ("tcp", "unix")
MAP_NAME: Final = "postfix"
HOT_KEYS: Final = 1000  # keys the load cycles through (all cached)
WARMUP: Final = 0.5  # seconds of load before each measurement starts recording
START_TIMEOUT: Final = 10.0
LOADGEN_SLACK: Final = 30.0  # seconds a load generator may take beyond its own duration
CLIENT_CPU: Final = "0"
SERVER_CPU: Final = "1"
# Issue 14 point 6.
TARGET_RATIO: Final = 0.5
TARGET_P99_US: Final = 1000.0
TARGET_P99_CONNECTIONS: Final = 100


@dataclasses.dataclass(frozen=True, slots=True)
class Load:
    """One load generator run, as it prints it."""

    count: int
    seconds: float
    rate: float
    p50_us: float
    p99_us: float
    p999_us: float
    errors: int
    answered: int  # replies including the warm-up's
    server_cpu_us: float = 0.0  # CPU time the server used during the whole run
    wall_us: float = 0.0  # the whole run, warm-up included

    @property
    def busy(self) -> float:
        """Share of one core the server used: near 1, the server limits the rate."""
        return self.server_cpu_us / self.wall_us if self.wall_us else 0.0

    @property
    def cpu_per_lookup_us(self) -> float:
        return self.server_cpu_us / self.answered if self.answered else 0.0

    @classmethod
    def parse(cls, line: str) -> Load:
        f = dict(item.split("=", 1) for item in line.split())
        return cls(
            count=int(f["count"]),
            seconds=float(f["seconds"]),
            rate=float(f["rate"]),
            p50_us=float(f["p50_us"]),
            p99_us=float(f["p99_us"]),
            p999_us=float(f["p999_us"]),
            errors=int(f["errors"]),
            answered=int(f["answered"]),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Tools:
    responder: Path
    loadgen: Path
    keys: Path
    pin: bool

    def client_prefix(self) -> list[str]:
        return ["taskset", "-c", CLIENT_CPU] if self.pin else []

    def pin_server(self, pid: int) -> None:
        if self.pin:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", SERVER_CPU, str(pid)],
                check=True,
                stdout=subprocess.DEVNULL,
            )

    def load(
        self, target: str, connections: int, seconds: float, pid: int = 0, once: bool = False
    ) -> Load:
        cmd = [*self.client_prefix(), str(self.loadgen), "-t", target, "-k", str(self.keys)]
        cmd += ["-n", MAP_NAME, "-c", str(connections), "-s", str(seconds), "-w", str(WARMUP)]
        if once:
            cmd.append("-o")
        cpu_before, wall_before = (cpu_ns(pid) if pid else 0), time.perf_counter_ns()
        done = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            timeout=seconds + WARMUP + LOADGEN_SLACK,
        )
        if done.returncode != 0:
            raise RuntimeError(f"loadgen {target}: {done.stderr.strip()}")
        fig = Load.parse(done.stdout.strip())
        if not pid:
            return fig
        cpu_us = (cpu_ns(pid) - cpu_before) / 1000
        wall_us = (time.perf_counter_ns() - wall_before) / 1000
        return dataclasses.replace(fig, server_cpu_us=cpu_us, wall_us=wall_us)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (the scheduler's own count)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total


def compile_tools(directory: Path, keys: Sequence[str], pin: bool) -> Tools:
    binaries = []
    for name in ("responder", "loadgen"):
        out = directory / name
        subprocess.run(
            ["cc", "-O2", "-Wall", "-o", str(out), str(C_SOURCES / f"{name}.c")], check=True
        )
        binaries.append(out)
    keyfile = directory / "keys.txt"
    keyfile.write_text("".join(f"{k}\n" for k in keys))
    return Tools(binaries[0], binaries[1], keyfile, pin)


@dataclasses.dataclass
class Server:
    """A server under test: its name, pid and the loadgen target per transport."""

    name: str
    pid: int
    targets: dict[str, str]


def start_responder(tools: Tools, directory: Path) -> tuple[Server, subprocess.Popen[str]]:
    path, port = directory / "responder.sock", free_port()
    proc = subprocess.Popen(
        [str(tools.responder), "-u", str(path), "-t", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("C responder did not start")
    tools.pin_server(proc.pid)
    targets = {"tcp": f"inet:127.0.0.1:{port}", "unix": f"unix:{path}"}
    return Server("C", proc.pid, targets), proc


def start_policyd(tools: Tools, directory: Path, destinations: int) -> tuple[Server, Daemon]:
    sections = base_sections(directory, "127.0.0.1")
    sections["probe"] = {"enabled": False}
    sections["log"] = {"level": "warning"}
    daemon = Daemon(directory, sections)
    daemon.start()
    assert daemon.proc is not None
    tools.pin_server(daemon.proc.pid)
    set_overrides(daemon.control, destinations)
    targets = {"tcp": f"inet:127.0.0.1:{daemon.tcp_port}", "unix": f"unix:{daemon.socket}"}
    server = Server("policyd", daemon.proc.pid, targets)
    warm = tools.load(targets["unix"], 10, 0.0, once=True)
    if warm.errors or warm.count < HOT_KEYS:
        raise RuntimeError(f"warming policyd: {warm}")
    return server, daemon


def hits(daemon: Daemon) -> int | None:
    """Cached answers given so far (the status command's counters), None if not reported."""
    status = control.result_object(control_call(daemon.control, control.Status()))
    lookups = status.get("lookups")
    value = lookups.get("hits") if isinstance(lookups, dict) else None
    return value if isinstance(value, int) else None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def loop_in_use() -> str:
    """The event loop policyd runs on (it uses uvloop when installed; same interpreter)."""
    try:
        return f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        return "asyncio (uvloop not installed)"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def span(values: Sequence[float], fmt: str) -> str:
    mid = format(statistics.median(values), fmt)
    if len(values) < 2:
        return mid
    return f"{mid} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def report(figures: dict[tuple[str, int, str], list[Load]], transports: Sequence[str]) -> list[str]:
    """The table (medians over the rounds, range in brackets) and the target check."""
    lines = [
        f"{'transport':<9} {'conns':>5} {'server':<8} {'lookups/s':<26} {'p50 us':<18}"
        f" {'p99 us':<20} {'CPU us/lookup':<18} {'server busy %'}"
    ]
    verdicts = []
    for transport in transports:
        for conns in CONNECTIONS:
            runs = {name: figures[(transport, conns, name)] for name in ("C", "policyd")}
            for name, figs in runs.items():
                lines.append(
                    f"{transport:<9} {conns:>5} {name:<8}"
                    f" {span([x.rate for x in figs], ',.0f'):<26}"
                    f" {span([x.p50_us for x in figs], '.0f'):<18}"
                    f" {span([x.p99_us for x in figs], '.0f'):<20}"
                    f" {span([x.cpu_per_lookup_us for x in figs], '.1f'):<18}"
                    f" {span([100 * x.busy for x in figs], '.0f')}"
                )
            pairs = zip(runs["policyd"], runs["C"], strict=True)
            ratios = [p.rate / c.rate for p, c in pairs if c.rate]
            lines.append(f"{'':>15} policyd/C {span([100 * r for r in ratios], '.0f')} %")
            ratio = statistics.median(ratios)
            ok = ratio >= TARGET_RATIO
            check = f"policyd/C {100 * ratio:.0f}% >= {100 * TARGET_RATIO:.0f}%"
            if conns == TARGET_P99_CONNECTIONS:
                p99 = statistics.median(x.p99_us for x in runs["policyd"])
                ok = ok and p99 < TARGET_P99_US
                check += f", policyd p99 {p99:.0f} us < {TARGET_P99_US:.0f} us"
            verdict = "met" if ok else "NOT met"
            verdicts.append(f"  {transport}, {conns} connections: {check}: {verdict}")
    errors = sum(x.errors for runs in figures.values() for x in runs)
    return [*lines, "", "target (issue 14 point 6, medians):", *verdicts, f"errors: {errors}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per figure")
    ap.add_argument("--destinations", type=int, default=10_000, help="overrides in policyd")
    ap.add_argument("--transport", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS))
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="no taskset pinning")
    args = ap.parse_args()
    if shutil.which("cc") is None or (args.pin and shutil.which("taskset") is None):
        print("needs cc (and taskset unless --no-pin)", file=sys.stderr)
        return 2
    if args.pin and cpu_count() < 2:
        args.pin = False
    directory = Path(tempfile.mkdtemp(prefix="policyd-hot-"))
    keys = [f"d{i}.bench.example" for i in range(min(HOT_KEYS, args.destinations))]
    tools = compile_tools(directory, keys, args.pin)
    responder: subprocess.Popen[str] | None = None
    daemon: Daemon | None = None
    try:
        print(
            f"machine: {platform.machine()}, {cpu_model()}, {cpu_count()} cores;"
            f" Python {sys.version.split()[0]}, {loop_in_use()}"
        )
        pinning = f"loadgen on CPU {CLIENT_CPU}, servers on CPU {SERVER_CPU}"
        print(f"pinning: {pinning if args.pin else 'none'}; load average before: {load_average()}")
        c_server, responder = start_responder(tools, directory)
        p_server, daemon = start_policyd(tools, directory, args.destinations)
        hits_before = hits(daemon)
        print(
            f"{args.rounds} rounds x {args.seconds:g}s per figure, {len(keys)} keys,"
            f" one request at a time per connection\n"
        )
        figures: dict[tuple[str, int, str], list[Load]] = {}
        asked = 0
        for r in range(args.rounds):
            order = (c_server, p_server) if r % 2 == 0 else (p_server, c_server)
            for transport in args.transport:
                for conns in CONNECTIONS:
                    for server in order:
                        fig = tools.load(server.targets[transport], conns, args.seconds, server.pid)
                        figures.setdefault((transport, conns, server.name), []).append(fig)
                        if server is p_server:
                            asked += fig.count
        hits_after = hits(daemon)
        print("\n".join(report(figures, args.transport)))
        if hits_before is not None and hits_after is not None:
            # warm-up requests are answered but not counted, so hits run above `asked`
            print(
                f"policyd cached answers during the runs: {hits_after - hits_before:,}"
                f" (recorded requests: {asked:,})"
            )
        print(f"load average after: {load_average()}")
    finally:
        if daemon is not None:
            daemon.stop()
        if responder is not None:
            responder.terminate()
            responder.wait(START_TIMEOUT)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())

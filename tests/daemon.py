"""Start a real ``policyd`` process for integration tests, with a config the test chooses."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tests.postfix_conf import postmap_cmd

START_TIMEOUT: Final = 20.0  # seconds for the daemon to create its sockets
STOP_TIMEOUT: Final = 10.0
POSTMAP_TIMEOUT: Final = 60.0
CTL_TIMEOUT: Final = 60.0  # seconds for one policyctl run (`probe --wait` included)
LOG_POLL: Final = 0.05  # seconds between two reads of the daemon's log


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def render_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Daemon:
    """A running policyd with its files in ``dir``."""

    dir: Path
    sections: dict[str, dict[str, Any]]
    proc: subprocess.Popen[bytes] | None = None
    # Words the command starts with, e.g. World.exec_prefix(): ``ip netns exec`` also
    # bind-mounts the namespace's resolv.conf, which the MTA-STS policy fetcher reads
    # (setns() alone, as with no prefix, keeps the host's).
    prefix: list[str] = field(default_factory=list)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.dir / "policyd.log"

    @property
    def config_path(self) -> Path:
        return self.dir / "policyd.toml"

    @property
    def socket(self) -> str:
        return str(self.dir / "policyd.sock")

    @property
    def control(self) -> str:
        return str(self.dir / "control.sock")

    @property
    def tcp_port(self) -> int:
        port: int = self.sections["server"]["_tcp_port"]
        return port

    def write_config(self) -> None:
        server = {k: v for k, v in self.sections["server"].items() if not k.startswith("_")}
        shown = {**self.sections, "server": server}
        self.config_path.write_text(render_toml(shown))

    def start(self) -> None:
        self.write_config()
        for path in (self.socket, self.control):
            if os.path.exists(path):
                os.unlink(path)
        argv = [sys.executable, "-m", "policyd.cli.daemon", "--config", str(self.config_path)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, *argv], stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not (os.path.exists(self.socket) and os.path.exists(self.control)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"policyd exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"policyd did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first match of the regular expression ``pattern`` in the log, once there;
        fails with the log's tail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern, self.log())) is None:
            assert time.monotonic() < deadline, f"{pattern!r} not in log:\n{self.log()[-3000:]}"
            time.sleep(LOG_POLL)
        return found

    def policyctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """One ``policyctl --socket <control> args...`` run; the test checks its result."""
        return subprocess.run(
            self._policyctl_argv(*args),
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT,
            check=False,
        )

    def probe_all(self, domains: Iterable[str]) -> None:
        """``policyctl probe --wait`` for every domain at once (the daemon probes them
        concurrently); fails unless each one succeeds."""
        procs = [
            subprocess.Popen(
                self._policyctl_argv("probe", domain, "--wait"),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for domain in domains
        ]
        for proc in procs:
            out, _ = proc.communicate(timeout=CTL_TIMEOUT)
            assert proc.returncode == 0, out.decode(errors="replace")

    def _policyctl_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "policyd.cli.policyctl", "--socket", self.control, *args]

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def restart(self) -> None:
        self.stop()
        self.start()

    def postmap(self, *keys: str, name: str = "postfix", tcp: bool = False) -> list[str]:
        """Ask through Postfix's own client: one ``postmap -q - socketmap:...`` run.

        Returns the value for each key ("NOTFOUND" when postmap prints nothing for it).
        """
        table = (
            f"socketmap:inet:127.0.0.1:{self.tcp_port}:{name}"
            if tcp
            else f"socketmap:unix:{self.socket}:{name}"
        )
        return postmap(table, keys)


def postmap(table: str, keys: tuple[str, ...] | list[str]) -> list[str]:
    if len(keys) == 1:
        res = subprocess.run(
            postmap_cmd("-q", keys[0], table),
            capture_output=True,
            timeout=POSTMAP_TIMEOUT,
            check=False,
        )
        err = res.stderr.decode(errors="replace").strip()
        if res.returncode == 1 and not res.stdout and not err:
            return ["NOTFOUND"]
        if res.returncode != 0:
            # TEMP/PERM replies: postmap warns with the reason and exits 1.
            return ["ERROR " + err]
        return [res.stdout.decode().rstrip("\n")]
    res = subprocess.run(
        postmap_cmd("-q", "-", table),
        input="\n".join(keys).encode() + b"\n",
        capture_output=True,
        timeout=POSTMAP_TIMEOUT,
        check=False,
    )
    found: dict[str, str] = {}
    for line in res.stdout.decode().splitlines():
        key, _, value = line.partition("\t")
        found[key] = value
    return [found.get(k, "NOTFOUND") for k in keys]


WORLD_NETWORK: Final = "127.0.0.0/8"  # every address of every test world


def base_sections(
    directory: Path, nameserver: str = "127.0.0.1", *, store: str | None = None
) -> dict[str, dict[str, Any]]:
    """A config of unix and TCP socketmap listeners in ``directory``, DNS from
    ``nameserver``, and the store at URL ``store`` (else SQLite in ``directory``)."""
    port = free_port()
    return {
        "server": {
            "socketmap": [f"unix:{directory}/policyd.sock", f"inet:127.0.0.1:{port}"],
            "control": f"unix:{directory}/control.sock",
            "socket_mode": "0666",
            "_tcp_port": port,
        },
        "dns": {"nameservers": [nameserver], "timeout": 1.0, "lifetime": 2.0},
        "store": {"url": store or f"sqlite:///{directory}/policyd.db"},
        "log": {"level": "debug"},
        # The test worlds' MX and MTA-STS hosts live on 127.0.0.0/8 (tests/world/addresses),
        # which policyd refuses to reach unless allowed (security review L2).
        "outbound": {"allow_networks": [WORLD_NETWORK]},
    }


def started(directory: Path, **overrides: dict[str, Any]) -> Iterator[Daemon]:
    sections = base_sections(directory)
    for name, table in overrides.items():
        sections.setdefault(name, {}).update(table)
    yield from running(Daemon(directory, sections))


def running(daemon: Daemon) -> Iterator[Daemon]:
    """For a fixture: ``daemon`` started, and stopped after the test."""
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()

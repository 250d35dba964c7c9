"""Load clients for socketmap benchmarks: one lookup at a time per connection, like Postfix.

Two clients: a small socket client in worker processes that records each request's latency,
and Postfix's own ``postmap -q -`` fed with a key list (the real client, for throughput).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from tests.postfix_conf import postmap_cmd

READ_SIZE: Final = 65536
CONNECT_TIMEOUT: Final = 10.0
REPLY_TIMEOUT: Final = 30.0  # seconds for one reply of the asyncio client


@dataclass(frozen=True, slots=True)
class Figures:
    connections: int
    lookups: int
    seconds: float
    p50_us: float
    p99_us: float
    errors: int

    @property
    def rate(self) -> float:
        return self.lookups / self.seconds if self.seconds else 0.0


def _connect(target: str) -> socket.socket:
    if target.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(target[5:])
    else:
        host, _, port = target.removeprefix("inet:").rpartition(":")
        sock = socket.create_connection((host, int(port)), CONNECT_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _request(name: str, key: str) -> bytes:
    payload = f"{name} {key}".encode()
    return b"%d:%s," % (len(payload), payload)


def _read_reply(sock: socket.socket, buf: bytearray) -> bytes:
    while True:
        colon = buf.find(b":")
        if colon > 0:
            size = int(buf[:colon])
            end = colon + 1 + size
            if len(buf) > end:
                payload = bytes(buf[colon + 1 : end])
                del buf[: end + 1]
                return payload
        chunk = sock.recv(READ_SIZE)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk


def _worker(
    target: str,
    name: str,
    keys: Sequence[str],
    seconds: float,
    start_at: float,
    out: mp.Queue[tuple[list[int], int]],
) -> None:
    sock = _connect(target)
    requests = [_request(name, k) for k in keys]
    buf = bytearray()
    latencies: list[int] = []
    errors = 0
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = time.perf_counter() + seconds
    i = 0
    n = len(requests)
    while time.perf_counter() < deadline:
        t0 = time.perf_counter_ns()
        sock.sendall(requests[i % n])
        reply = _read_reply(sock, buf)
        latencies.append(time.perf_counter_ns() - t0)
        if not reply.startswith((b"OK", b"NOTFOUND")):
            errors += 1
        i += 1
    sock.close()
    out.put((latencies, errors))


def run_clients(
    target: str, name: str, keys: Sequence[str], connections: int, seconds: float
) -> Figures:
    """``connections`` processes, each one connection doing one lookup at a time."""
    ctx = mp.get_context("fork")
    out: mp.Queue[tuple[list[int], int]] = ctx.Queue()
    start_at = time.time() + 0.5 + connections * 0.01
    procs = []
    for c in range(connections):
        share = keys[c::connections] or keys
        p = ctx.Process(target=_worker, args=(target, name, share, seconds, start_at, out))
        p.start()
        procs.append(p)
    all_lat: list[int] = []
    errors = 0
    for _ in procs:
        lat, err = out.get(timeout=seconds + 60)
        all_lat += lat
        errors += err
    for p in procs:
        p.join(10)
    all_lat.sort()
    if not all_lat:
        return Figures(connections, 0, seconds, 0.0, 0.0, errors)
    p50 = all_lat[len(all_lat) // 2] / 1000
    p99 = all_lat[min(len(all_lat) - 1, int(len(all_lat) * 0.99))] / 1000
    return Figures(connections, len(all_lat), seconds, p50, p99, errors)


def run_postmap(table: str, keys: Sequence[str], connections: int) -> tuple[int, float]:
    """Parallel ``postmap -q - TABLE`` processes, each fed its share of the keys.

    Returns (lookups answered, seconds).
    """
    shares = [keys[c::connections] for c in range(connections)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            postmap_cmd("-q", "-", table),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for _ in shares
    ]
    # Feed and drain each process from its own thread: writing every stdin before reading
    # any stdout would deadlock once the pipes fill.
    outputs: list[bytes] = [b""] * len(procs)

    def talk(i: int) -> None:
        outputs[i] = procs[i].communicate(("\n".join(shares[i]) + "\n").encode())[0]

    threads = [threading.Thread(target=talk, args=(i,)) for i in range(len(procs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answered = sum(out.count(b"\n") for out in outputs)
    return answered, time.perf_counter() - t0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_count() -> int:
    return os.cpu_count() or 1


# -- an asyncio client, for warming caches and one-off lookups -----------------------------


async def _read_netstring(reader: asyncio.StreamReader) -> str:
    size = int((await reader.readuntil(b":"))[:-1])
    data = await reader.readexactly(size + 1)
    return data[:-1].decode()


async def lookups(port: int, keys: Sequence[str], name: str = "postfix") -> list[tuple[str, float]]:
    """One connection to 127.0.0.1:``port``, one lookup at a time: (reply, seconds) per key."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out: list[tuple[str, float]] = []
    try:
        for key in keys:
            t0 = time.perf_counter()
            writer.write(_request(name, key))
            await writer.drain()
            reply = await asyncio.wait_for(_read_netstring(reader), REPLY_TIMEOUT)
            out.append((reply, time.perf_counter() - t0))
    finally:
        writer.close()
    return out


async def _many(port: int, keys: Sequence[str], concurrency: int) -> dict[str, tuple[str, float]]:
    shares = [keys[i::concurrency] for i in range(concurrency)]
    results = await asyncio.gather(*(lookups(port, s) for s in shares if s))
    found: dict[str, tuple[str, float]] = {}
    for share, res in zip([s for s in shares if s], results, strict=True):
        found.update(zip(share, res, strict=True))
    return found


def many(port: int, keys: Sequence[str], concurrency: int) -> dict[str, tuple[str, float]]:
    """Every key looked up over ``concurrency`` connections: key -> (reply, seconds)."""
    return asyncio.run(_many(port, keys, concurrency))


def show(reply: str) -> str:
    """A socketmap reply as postmap shows it: the value, NOTFOUND, or TEMP/PERM."""
    if reply.startswith("OK "):
        return reply[3:]
    return reply.strip()

"""Fakes for unit tests: an in-memory store and evidence sources driven by the test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from policyd.adapters.claims import ClaimBusy, Job
from policyd.adapters.dns import DnsAnswer, MxRecord, Rcode
from policyd.adapters.dns import Record as DnsRecord
from policyd.adapters.store import Kind, Record
from policyd.codec import netstring
from policyd.core.event import Event
from policyd.core.evidence import (
    Destination,
    DnsEvidence,
    DnsStatus,
    MxHost,
    ProbeState,
    StsEvidence,
    Tlsa,
)
from policyd.core.names import domain_name
from policyd.core.types import Rule


class MemoryStore:
    def __init__(self) -> None:
        self.records: dict[tuple[Kind, str], Record] = {}
        self.event_log: list[Event] = []

    async def put(self, record: Record) -> None:
        self.records[(record.kind, record.key)] = record

    async def get(self, kind: Kind, key: str) -> Record | None:
        return self.records.get((kind, key))

    async def delete(self, kind: Kind, key: str) -> bool:
        return self.records.pop((kind, key), None) is not None

    async def scan(self, kind: Kind) -> list[Record]:
        return [r for (k, _), r in self.records.items() if k is kind]

    async def flush(self, key: str | None, *, mta_sts: bool = True) -> int:
        kept = {Kind.OVERRIDE} if mta_sts else {Kind.OVERRIDE, Kind.STS}
        doomed = [k for k in self.records if k[0] not in kept and (key is None or k[1] == key)]
        for k in doomed:
            del self.records[k]
        return len(doomed)

    async def append_event(self, event: Event) -> None:
        self.event_log.append(event)

    async def events(self, since: float) -> list[Event]:
        return [e for e in self.event_log if e.at >= since]

    async def close(self) -> None:
        return None


def event(
    at: float, key: str, reason: str = "x", level: str = "encrypt", previous: str | None = None
) -> Event:
    """A decision event for store tests: the fields that tell events apart, the rest fixed."""
    return Event(at, key, "postfix", Rule.PROBE, level, reason, previous=previous)


class NullStore(MemoryStore):
    """Accepts and forgets (a benchmark's: the store's own memory is not the service's)."""

    async def put(self, record: Record) -> None:
        return None

    async def append_event(self, event: Event) -> None:
        return None


def plain_dns(name: str, now: float, ttl: float = 300.0) -> DnsEvidence:
    host = MxHost(f"mx.{name}", 10, DnsStatus.SECURE, ("192.0.2.1",), tlsa=DnsStatus.SECURE)
    return DnsEvidence(DnsStatus.SECURE, hosts=(host,), fetched_at=now, expires_at=now + ttl)


@dataclass
class FakeDane:
    answers: dict[str, DnsEvidence] = field(default_factory=dict)
    calls: int = 0
    delay: float = 0.0
    gate: asyncio.Event | None = None  # when given, every lookup waits until it is set

    async def gather(
        self, dest: Destination, now: float, takes_mail: Callable[[], object] | None = None
    ) -> DnsEvidence:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        evidence = self.answers.get(dest.name) or plain_dns(dest.name, now)
        if takes_mail is not None and (evidence.hosts or evidence.mx is DnsStatus.FAILED):
            takes_mail()  # as DnsSource does, here after the wait (before it, the MX)
        return evidence


@dataclass
class FakeSts:
    answers: dict[str, StsEvidence] = field(default_factory=dict)

    def cached(self, domain: str, now: float) -> StsEvidence:
        return self.answers.get(domain, StsEvidence())

    async def evidence(self, domain: str) -> StsEvidence:
        return self.answers.get(domain, StsEvidence())

    def forget(self, domain: str | None) -> None:
        if domain is None:
            self.answers.clear()
        else:
            self.answers.pop(domain, None)


@dataclass
class FakeProbe:
    states: dict[str, ProbeState] = field(default_factory=dict)
    wanted: list[str] = field(default_factory=list)

    def cached(self, key: str) -> ProbeState | None:
        return self.states.get(key)

    def want(self, dest: Destination, dns: DnsEvidence) -> bool:
        self.wanted.append(dest.key)
        return True

    def forget(self, key: str | None) -> None:
        if key is None:
            self.states.clear()
        else:
            self.states.pop(key, None)


SERVICE_NOW = 1_800_000_000.0  # the wall clock the service tests start at


class ServiceClock:
    """The two clocks of a PolicyService (wall and monotonic), moved together by hand."""

    def __init__(self) -> None:
        self.now = SERVICE_NOW
        self.mono = 1000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


def reply(encoded: bytes) -> bytes:
    """The payload of one netstring-encoded socketmap reply."""
    dec = netstring.Decoder()
    dec.receive_data(encoded)
    out = dec.next_payload()
    assert isinstance(out, bytes)
    return out


# -- DNS: typed answers as policyd.adapters.dns returns them ----------------------------


def dns_record(rdtype: str, text: str) -> DnsRecord:
    """One record from its presentation text (RFC 1035 5.1), as the adapter types it:
    ``MX`` "10 mx.example." (MxRecord; "." the null MX), ``TLSA`` "3 1 1 <hex>",
    ``TXT`` '"v=STSv1; id=1"' (one string; quotes optional), ``A``/``AAAA`` the address."""
    if rdtype == "MX":
        preference, exchange = text.split()
        name = None if exchange == "." else domain_name(exchange)
        return MxRecord(int(preference), name)
    if rdtype == "TLSA":
        usage, selector, mtype, data = text.split(maxsplit=3)
        return Tlsa(int(usage), int(selector), int(mtype), bytes.fromhex(data.replace(" ", "")))
    if rdtype == "TXT":
        return text[1:-1] if text.startswith('"') and text.endswith('"') else text
    return text


def dns_answer(
    name: str,
    rdtype: str,
    *records: str,
    status: DnsStatus = DnsStatus.SECURE,
    ttl: int = 300,
    rcode: Rcode = Rcode.NOERROR,
    canonical: str = "",
) -> DnsAnswer:
    """A completed answer with records given as presentation text (see :func:`dns_record`)."""
    typed = tuple(dns_record(rdtype, r) for r in records)
    return DnsAnswer(name, rdtype, status, rcode, typed, canonical or name, ttl)


def dns_failure(name: str, rdtype: str, error: str = "SERVFAIL", ttl: int = 5) -> DnsAnswer:
    rcode = Rcode.SERVFAIL if error == "SERVFAIL" else None
    return DnsAnswer(name, rdtype, DnsStatus.FAILED, rcode, (), name, ttl, error)


class FakeResolver:
    """Scripted DNS answers by (name, type); anything not scripted is a secure NODATA.
    ``asked`` lists the queries in order. Each query yields to the loop once, as a real
    lookup would."""

    def __init__(self, *answers: DnsAnswer) -> None:
        self.answers: dict[tuple[str, str], DnsAnswer] = {}
        self.asked: list[tuple[str, str]] = []
        self.add(*answers)

    def add(self, *answers: DnsAnswer) -> None:
        self.answers.update({(a.name, a.rdtype): a for a in answers})

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        self.asked.append((name, rdtype))
        await asyncio.sleep(0)
        answer = self.answers.get((name, rdtype))
        return answer or DnsAnswer(name, rdtype, DnsStatus.SECURE, Rcode.NOERROR, (), name, 600)


class RecordingClaims:
    """Work claims that run the work, or answer with a canned result, or are busy; every
    job asked for is kept in ``jobs``."""

    def __init__(self, canned: str | None = None, busy: bool = False) -> None:
        self.canned = canned
        self.busy = busy
        self.jobs: list[Job] = []

    async def once(self, job: Job) -> str:
        self.jobs.append(job)
        if self.busy:
            raise ClaimBusy(str(job))
        return self.canned if self.canned is not None else await job.work()


@dataclass
class RecordingCache:
    """An answer cache subscribed to a PolicyService: records what it is told is stale."""

    invalidated: list[str | None] = field(default_factory=list)
    held: int = 0

    def invalidate(self, key: str | None) -> None:
        self.invalidated.append(key)

    def __len__(self) -> int:
        return self.held


async def run_ready(turns: int = 20) -> None:
    """Let every task that can run, run: turns of the event loop, no time passes."""
    for _ in range(turns):
        await asyncio.sleep(0)


class FakeTransport(asyncio.Transport):
    """What a protocol writes and asks of its transport, recorded; nothing is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False
        self.resumes += 1

    def is_reading(self) -> bool:
        return not self.paused

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def no_time(seconds: float) -> None:
    """A sleep for code that takes one: yields to the loop once, and no time passes."""
    await asyncio.sleep(0)

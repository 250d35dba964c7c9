"""Metrics: plain-integer counters, the custom collector rendered and parsed back with
prometheus_client's own parser, the HTTP listener on loopback, the dashboard's names, and
the dry-run profile's counting."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from policyd.adapters.dns import Resolver
from policyd.adapters.store import Kind, Record, StoreError
from policyd.adapters.store_counted import CountedStore
from policyd.alerts import AlertKind, Alerts
from policyd.codec import netstring
from policyd.core.evidence import ProbeLevel, ProbeState
from policyd.core.profile import DEFAULT_PROFILES, Profile
from policyd.counters import MAX_LABEL_SETS, OTHER, Histogram, LabelledCounter
from policyd.listeners import parse_listener
from policyd.server.metrics import MetricsServer, PolicydCollector
from policyd.server.reply_cache import HOT_SAMPLE_EVERY, ReplyCache
from policyd.service import PolicyService
from policyd.settings import DnsSettings
from policyd.sources.probe import ProbeSource
from policyd.sources.sts import StsSource
from tests.fakes import FakeDane, FakeProbe, FakeSts, MemoryStore, reply

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "etc" / "grafana-dashboard.json"


# -- counters --------------------------------------------------------------------------


def test_histogram_is_cumulative() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert h.count == 4
    assert h.sum == pytest.approx(3.65)


def test_histogram_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram((1.0, 0.5))


def test_label_sets_are_bounded() -> None:
    c = LabelledCounter()
    for i in range(MAX_LABEL_SETS + 10):
        c.inc("p", str(i))
    items = dict(c.items())
    assert len(items) == MAX_LABEL_SETS + 1
    assert items[(OTHER, OTHER)] == 10


def test_cell_is_shared() -> None:
    c = LabelledCounter()
    cell = c.cell("postfix", "verify")
    cell[0] += 2
    c.inc("postfix", "verify")
    assert c.items() == [(("postfix", "verify"), 3)]


# -- the service counts ----------------------------------------------------------------


def service(profiles: tuple[Profile, ...] = DEFAULT_PROFILES) -> PolicyService:
    probe = FakeProbe({"example.test": ProbeState(ProbeLevel.VERIFY)})
    return PolicyService(profiles, MemoryStore(), FakeDane(), FakeSts(), probe, lookup_budget=1.0)


async def test_hits_count_by_profile_and_level_and_are_sampled() -> None:
    svc = service()
    cache = ReplyCache(svc)
    payload = b"postfix example.test"
    await cache.reply_for(payload)
    for _ in range(2 * HOT_SAMPLE_EVERY):
        assert cache.cached(payload) is not None
    assert svc.stats.hits == 2 * HOT_SAMPLE_EVERY
    assert dict(svc.counters.answers.items()) == {("postfix", "verify"): 2 * HOT_SAMPLE_EVERY + 1}
    assert svc.counters.hot.count == 2  # one hit in HOT_SAMPLE_EVERY is timed
    assert svc.counters.slow.count == 1
    assert svc.counters.misses == 1


async def test_dry_run_answers_notfound_and_counts_what_it_would_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trial = Profile("trial", dry_run=True)
    svc = service((*DEFAULT_PROFILES, trial))
    cache = ReplyCache(svc)
    with caplog.at_level(logging.INFO, logger="policyd"):
        assert reply(await cache.reply_for(b"trial example.test")) == b"NOTFOUND "
        assert (
            reply(await cache.reply_for(b"postfix example.test"))
            == b"OK verify servername=hostname"
        )
    assert cache.cached(b"trial example.test") == netstring.encode(b"NOTFOUND ")
    assert dict(svc.counters.dry_run.items()) == {("trial", "verify"): 1}
    answers = dict(svc.counters.answers.items())
    assert answers[("trial", "NOTFOUND")] == 2  # the miss and the hit
    assert answers[("postfix", "verify")] == 1
    assert (
        "example.test: level=verify,servername=hostname profile=trial dry-run=yes reason="
        in "\n".join(caplog.messages)
    )
    assert svc.remembered()[("trial", "example.test")].policy is not None  # for the report


# -- the counted store -----------------------------------------------------------------


class BrokenStore(MemoryStore):
    async def put(self, record: Record) -> None:
        raise StoreError("disk full")


async def test_counted_store_counts_errors() -> None:
    store = CountedStore(BrokenStore())
    with pytest.raises(StoreError):
        await store.put(Record(Kind.PROBE, "k", "{}", None))
    assert await store.get(Kind.PROBE, "k") is None
    assert store.errors == 1


# -- the collector, rendered and parsed back -------------------------------------------


class Listeners:
    connections = 3
    refused = 2


async def collector() -> tuple[PolicydCollector, PolicyService]:
    store = CountedStore(MemoryStore())
    svc = service()

    async def prober(_mx: object) -> list[object]:
        return []

    probe = ProbeSource(store, prober)  # type: ignore[arg-type]
    sts = StsSource(store, None, None)  # type: ignore[arg-type]
    alerts = Alerts()
    alerts.open(AlertKind.RESOLVER, "resolver", "name=.")
    col = PolicydCollector(
        service=svc,
        listeners=Listeners(),
        probe=probe,
        sts=sts,
        resolver=Resolver(DnsSettings()),
        store=store,
        alerts=alerts,
    )
    return col, svc


def parsed(server: MetricsServer) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(server.render().decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_collector_renders_what_was_counted() -> None:
    col, svc = await collector()
    cache = ReplyCache(svc)
    await cache.reply_for(b"postfix example.test")
    cache.cached(b"postfix example.test")
    await cache.reply_for(b"nosuch example.test")
    got = parsed(MetricsServer(parse_listener("inet:127.0.0.1:9464"), col))
    assert got["policyd_lookups_total"] == {
        (("result", "hit"),): 1,
        (("result", "miss"),): 1,
        (("result", "perm"),): 1,
        (("result", "temp"),): 0,
    }
    assert got["policyd_answers_total"] == {(("level", "verify"), ("profile", "postfix")): 2}
    assert got["policyd_lookup_duration_seconds_count"][(("path", "slow"),)] == 2
    assert got["policyd_connections_open"] == {(): 3}
    assert got["policyd_connections_refused_total"] == {(): 2}
    assert got["policyd_resolver_validating"] == {(): 0}
    assert got["policyd_alerts_total"][(("alert", "resolver-not-validating"),)] == 1
    assert got["policyd_destinations_cached"] == {(): 1}
    assert got["policyd_prefetches_total"] == {
        (("result", "started"),): 0,
        (("result", "skipped"),): 0,
        (("result", "failed"),): 0,
    }
    for name in got:
        assert name.startswith("policyd_"), name


async def test_dashboard_uses_only_exported_metrics() -> None:
    col, _ = await collector()
    names: set[str] = set()
    text = MetricsServer(parse_listener("inet:127.0.0.1:9464"), col).render().decode()
    for family in text_string_to_metric_families(text):
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        names |= {s.name for s in family.samples}
    dashboard = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bpolicyd_[a-z_]+", target["expr"]))
    assert used
    assert used <= names, used - names


async def test_http_listener_on_loopback() -> None:
    col, _ = await collector()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = MetricsServer(parse_listener(f"inet:127.0.0.1:{port}"), col)
    await server.start()

    async def ask(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data

    try:
        ok = await ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b"policyd_lookups_total" in ok
        missing = await ask(b"GET /other HTTP/1.1\r\n\r\n")
        assert missing.startswith(b"HTTP/1.0 404")
        huge = await ask(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        assert huge == b""  # an oversized head is dropped, the server lives on
        assert (await ask(b"GET /metrics HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 200")
    finally:
        await server.close()


@given(st.binary(max_size=300))
def test_any_request_head_gets_an_http_answer(head: bytes) -> None:
    server = MetricsServer(parse_listener("inet:127.0.0.1:9464"), EMPTY)
    answer = server._respond(head)
    assert answer.startswith((b"HTTP/1.0 200 OK\r\n", b"HTTP/1.0 404 Not Found\r\n"))


class _Empty:
    def collect(self) -> list[Metric]:
        return []


EMPTY = _Empty()  # a collector with no metrics: _respond is what is under test

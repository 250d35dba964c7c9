"""Prometheus metrics: the daemon's plain-integer counters in the text exposition format.

The parts of the daemon count with plain integers (:mod:`policyd.counters`); nothing here
runs until Prometheus scrapes ``GET /metrics`` on ``[metrics] listen``. Then
:class:`PolicydCollector` reads those integers and ``prometheus_client`` renders them. The
HTTP listener runs on the event loop (no thread), so a scrape reads counters that no other
thread is changing. Names follow the Prometheus conventions: ``policyd_`` prefix, base
units (seconds), ``_total`` for counters. man/policyd.8 lists every metric.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from policyd.adapters.dns import Resolver
from policyd.adapters.store_counted import CountedStore
from policyd.alerts import AlertKind, Alerts
from policyd.config import Listener
from policyd.counters import Histogram
from policyd.server.alert_checks import RESOLVER_SUBJECT
from policyd.service import PolicyService
from policyd.sources.probe import ProbeSource
from policyd.sources.sts import StsSource

if TYPE_CHECKING:
    from policyd.adapters.fleet_redis import RedisFleet

log = logging.getLogger("policyd")

MAX_REQUEST_HEAD: Final = 8192  # bytes of request line and headers; a scrape sends ~200
REQUEST_TIMEOUT: Final = 10.0  # seconds to send the request head
MAX_SCRAPERS: Final = 8  # concurrent metrics connections; more are closed at once
LOOKUP_RESULTS: Final = ("hit", "miss", "perm", "temp")


class ListenerStats(Protocol):
    @property
    def connections(self) -> int: ...
    @property
    def refused(self) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)  # eq=False: hashed as itself
class PolicydCollector:
    """A custom collector: every sample computed from the daemon's counters at scrape."""

    service: PolicyService
    listeners: ListenerStats
    probe: ProbeSource
    sts: StsSource
    resolver: Resolver
    store: CountedStore
    alerts: Alerts
    fleet: RedisFleet | None = None

    def collect(self) -> Iterator[Metric]:
        yield from self._lookups()
        yield from self._sources()
        yield from self._fleet()
        yield from self._daemon()

    def _lookups(self) -> Iterator[Metric]:
        service = self.service
        stats, counters = service.stats, service.counters
        lookups = CounterMetricFamily(
            "policyd_lookups",
            "Socketmap lookups by result: hit (cached reply), miss (decided now), "
            "perm (bad request), temp (TEMP answered from the slow path).",
            labels=["result"],
        )
        values = (stats.hits, counters.misses, stats.perm, counters.temp)
        for result, value in zip(LOOKUP_RESULTS, values, strict=True):
            lookups.add_metric([result], value)
        yield lookups
        yield _labelled(
            "policyd_answers",
            "Answers given to Postfix by profile and level (TEMP, NOTFOUND or the TLS level).",
            ["profile", "level"],
            counters.answers.items(),
        )
        yield _labelled(
            "policyd_dry_run_answers",
            "Answers a dry-run profile would have given (it answered NOTFOUND instead).",
            ["profile", "level"],
            counters.dry_run.items(),
        )
        latency = HistogramMetricFamily(
            "policyd_lookup_duration_seconds",
            "Time to answer one lookup inside policyd: path=hot is a cached reply "
            "(one in 64 timed), path=slow gathers evidence and decides.",
            labels=["path"],
        )
        for path, hist in (("hot", counters.hot), ("slow", counters.slow)):
            latency.add_metric([path], _buckets(hist), hist.sum)
        yield latency
        prefetches = CounterMetricFamily(
            "policyd_prefetches",
            "Cached answers refreshed before they expire ([server] prefetch): started, "
            "skipped (at the limit in flight: each waits for one to end), "
            "failed (the old answer expires at its time).",
            labels=["result"],
        )
        for result, value in (
            ("started", stats.prefetched),
            ("skipped", stats.prefetch_skipped),
            ("failed", stats.prefetch_failed),
        ):
            prefetches.add_metric([result], value)
        yield prefetches
        yield GaugeMetricFamily(
            "policyd_destinations_cached",
            "Destinations with a cached answer.",
            value=service.cached_destinations,
        )

    def _sources(self) -> Iterator[Metric]:
        sts = self.sts.counters
        yield GaugeMetricFamily(
            "policyd_mta_sts_policies_cached",
            "MTA-STS policies in force in the cache (enforce or testing).",
            value=self.sts.cached_policies(time.time()),
        )
        yield CounterMetricFamily(
            "policyd_mta_sts_fetches", "MTA-STS policy fetches (HTTPS).", value=sts.fetches
        )
        yield CounterMetricFamily(
            "policyd_mta_sts_fetch_failures",
            "MTA-STS policy fetches that failed or gave an invalid policy.",
            value=sts.fetch_failures,
        )
        yield CounterMetricFamily(
            "policyd_mta_sts_refresh_failures",
            "Failed refreshes (TXT lookup or fetch) of a cached MTA-STS policy.",
            value=sts.refresh_failures,
        )
        yield _labelled(
            "policyd_probes",
            "STARTTLS probes of MX addresses by verdict.",
            ["verdict"],
            self.probe.counters.verdicts.items(),
        )
        pstats = self.probe.stats()
        yield GaugeMetricFamily(
            "policyd_probe_queue_depth",
            "Destinations waiting for a probe.",
            value=pstats.queued,
        )
        yield CounterMetricFamily(
            "policyd_probe_queue_dropped",
            "Probe requests dropped because the queue was full.",
            value=pstats.dropped,
        )
        yield CounterMetricFamily(
            "policyd_damping_held",
            "Probes whose weaker result damping held back (possible STARTTLS stripping).",
            value=self.probe.counters.held,
        )
        yield GaugeMetricFamily(
            "policyd_damping_held_destinations",
            "Destinations whose weaker probe result is held back now.",
            value=self.probe.held_back(),
        )
        yield _labelled(
            "policyd_dns_queries",
            "DNS queries sent to the resolver by outcome (secure, insecure, failed).",
            ["outcome"],
            self.resolver.counters.outcomes.items(),
        )

    def _fleet(self) -> Iterator[Metric]:
        if self.fleet is None:
            return
        yield GaugeMetricFamily(
            "policyd_fleet_link_up",
            "1 while the Redis fleet link (claims, change messages) is up, else 0.",
            value=int(self.fleet.up),
        )
        work = CounterMetricFamily(
            "policyd_fleet_work",
            "Probes and MTA-STS fetches through fleet claims, by how they were settled.",
            labels=["kind", "how"],
        )
        c = self.fleet.counters
        for kind, settled in c.work.items():
            for how, value in settled.items():
                work.add_metric([kind, how], value)
        yield work
        yield CounterMetricFamily(
            "policyd_fleet_publish_failures",
            "Change messages not sent (the periodic override reload covers them).",
            value=c.publish_failures,
        )

    def _daemon(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "policyd_store_errors", "Failed store operations.", value=self.store.errors
        )
        yield GaugeMetricFamily(
            "policyd_connections_open",
            "Open socketmap connections.",
            value=self.listeners.connections,
        )
        yield CounterMetricFamily(
            "policyd_connections_refused",
            "Socketmap connections closed at [server] max_connections "
            "(refused, or the longest-idle one closed to admit a new one).",
            value=self.listeners.refused,
        )
        alerts = CounterMetricFamily(
            "policyd_alerts", "Alerts logged (alert=KIND in the log).", labels=["alert"]
        )
        for kind, value in self.alerts.counts.items():
            alerts.add_metric([kind.value], value)
        yield alerts
        active = GaugeMetricFamily(
            "policyd_alerts_active",
            "Alert episodes open now (a DANE destination still TEMP, a stale MTA-STS "
            "policy, a resolver that does not validate).",
            labels=["alert"],
        )
        for kind in (AlertKind.DANE_TEMP, AlertKind.STS_STALE, AlertKind.RESOLVER):
            active.add_metric([kind.value], self.alerts.active(kind))
        yield active
        yield GaugeMetricFamily(
            "policyd_resolver_validating",
            "1 when the last check found the resolver validating DNSSEC, else 0.",
            value=0 if self.alerts.is_open(AlertKind.RESOLVER, RESOLVER_SUBJECT) else 1,
        )


def _labelled(
    name: str, text: str, labels: list[str], items: Iterable[tuple[tuple[str, ...], int]]
) -> CounterMetricFamily:
    """A counter family from (label values, count) pairs."""
    family = CounterMetricFamily(name, text, labels=labels)
    for values, count in items:
        family.add_metric(list(values), count)
    return family


def _buckets(hist: Histogram) -> list[tuple[str, float]]:
    return [("+Inf" if b == float("inf") else repr(b), n) for b, n in hist.cumulative()]


class MetricsServer:
    """``GET /metrics`` over HTTP/1.0 on the event loop; every other request gets 404."""

    def __init__(self, listen: Listener, collector: Collector) -> None:
        self.listener = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._server: asyncio.Server | None = None
        self._active = 0

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def start(self) -> None:
        # inet only ([metrics] listen is checked by policyd.config): Prometheus scrapes TCP.
        self._server = await asyncio.start_server(
            self._handle,
            self.listener.host,
            self.listener.port,
            limit=MAX_REQUEST_HEAD,
            reuse_address=True,
        )
        log.info("metrics: Prometheus can scrape http on %s", _shown(self.listener))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= MAX_SCRAPERS:
            writer.close()
            return
        self._active += 1
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(self._respond(head))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a half-sent or oversized request: just close
        except OSError as exc:
            log.debug("metrics: connection failed: %s", exc)
        except Exception:  # the per-connection catch-all: a scrape bug never stops policyd
            log.exception("metrics: internal error answering a scrape")
        finally:
            self._active -= 1
            writer.close()

    def _respond(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) == 3 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
            body, status, ctype = self.render(), b"200 OK", CONTENT_TYPE_LATEST.encode()
        else:
            body, status, ctype = b"not found: try /metrics\n", b"404 Not Found", b"text/plain"
        return (
            b"HTTP/1.0 " + status + b"\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n" + body
        )  # fmt: skip


def _shown(listener: Listener) -> str:
    host = f"[{listener.host}]" if ":" in listener.host else listener.host
    return f"http://{host}:{listener.port}/metrics"

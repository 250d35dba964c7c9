"""``policyd``: the daemon Postfix asks for each destination's TLS policy.

This module is the composition root: it wires config -> store -> DNS/MTA-STS/probe
sources -> service -> listeners, then runs until SIGTERM. SIGHUP reloads the
configuration and the overrides without dropping connections (a bad new file is logged
and the old configuration kept). systemd is told READY=1 once the listeners are up,
WATCHDOG=1 while the loop and every background task are alive (a task that dies stops
the pings, so systemd restarts the daemon), and STOPPING=1 on the way out. Housekeeping
runs each of its steps on its own: a failing step is logged and the others, and the next
round, go on.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Final

from policyd import __version__
from policyd.adapters.claims import LocalClaims, WorkClaims
from policyd.adapters.cpu_slice import Outcome, request_slice
from policyd.adapters.dns import Resolver
from policyd.adapters.hostaddr import remote_nameservers, resolv_conf_nameservers
from policyd.adapters.https import PolicyFetcher
from policyd.adapters.store import ExpiringStore, Store, StoreError
from policyd.adapters.store_counted import CountedStore
from policyd.adapters.store_published import PublishingStore
from policyd.adapters.store_sqlite import SqliteStore
from policyd.admin import Admin, Facts
from policyd.alerts import Alerts
from policyd.cli.logs import set_log_level, setup_logging
from policyd.cli.startup import config_or_exit
from policyd.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load
from policyd.core.reach import Reach
from policyd.server.alert_checks import watch_resolver, watch_sts
from policyd.server.control import ControlServer
from policyd.server.fleet_sync import FleetSync
from policyd.server.metrics import MetricsServer, PolicydCollector
from policyd.server.notify import Notifier
from policyd.server.socketmap import SocketmapServer
from policyd.service import PolicyService
from policyd.settings import StoreSettings, is_redis_url
from policyd.singleflight import TaskSet
from policyd.sources.dns import DnsSource, FreshQueries
from policyd.sources.fleet_work import ClaimedFetcher, claimed_prober
from policyd.sources.probe import ProbeSource, make_prober
from policyd.sources.sts import StsSource

if TYPE_CHECKING:
    from policyd.adapters.fleet_redis import RedisFleet

log = logging.getLogger("policyd")

HOUSEKEEPING_INTERVAL: Final = 60.0  # seconds: override expiry, MTA-STS refresh check
# Cycle collector thresholds: at the default (700, 10, 10) a cold lookup's allocations set
# off a collection every few lookups, and full passes over the caches made most of the
# cold path's p99 (issue 14: 51-77 ms -> 32-42 ms on the cold bench).
GC_THRESHOLDS: Final = (10_000, 50, 1000)


async def open_store(settings: StoreSettings) -> Store:
    if is_redis_url(settings.url):
        from policyd.adapters.store_redis import RedisStore

        return await RedisStore.open(settings.url, max_connections=settings.redis_max_connections)
    return await SqliteStore.open(settings.url)


# Config tables read once at start: a reload names them when they changed (review L6).
RESTART_TABLES: Final = (
    "server",
    "dns",
    "tls",
    "store",
    "sts",
    "probe",
    "metrics",
    "fleet",
    "outbound",
)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._stop = asyncio.Event()
        # Background tasks, held until shutdown; one that dies stops the watchdog pings.
        self._tasks = TaskSet(log)
        self._died: list[str] = []  # names of the background tasks that died
        self._reloads = TaskSet(log)  # SIGHUP reloads in progress, held until done
        self.started_at = 0.0
        self.fleet: RedisFleet | None = None  # the fleet link, with a Redis store

    async def run(self) -> int:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self.started_at = loop.time()
        try:
            store = CountedStore(await open_store(cfg.store))
        except StoreError as exc:
            log.error(
                "store: cannot open [store] url %s: %s; its directory must exist and "
                "belong to the user policyd runs as (policyctl doctor checks it)",
                cfg.store.url,
                exc,
            )
            return 1
        fleet = None
        if cfg.fleet.enabled and is_redis_url(cfg.store.url):
            from policyd.adapters.fleet_redis import RedisFleet  # redis-py: optional

            fleet = RedisFleet.from_url(cfg.store.url, cfg.store.redis_max_connections)
        self.fleet = fleet
        claims: WorkClaims = fleet if fleet is not None else LocalClaims()
        shared: Store = store if fleet is None else PublishingStore(store, fleet.publish)
        resolver = Resolver(cfg.dns, log=log)
        try:
            reach = Reach.of(cfg.outbound.allow_networks)  # review L2
            fetcher = PolicyFetcher(cfg.tls.ca_file, cfg.sts.timeouts, reach=reach)
            prober = make_prober(cfg.probe, cfg.tls.ca_file, reach=reach)
        except (OSError, ValueError) as exc:
            log.error(
                "[tls] ca_file %s is not usable: %s; install ca-certificates or name a PEM "
                "bundle of trusted CAs",
                cfg.tls.ca_file,
                exc,
            )
            await store.close()
            return 1
        policy_fetcher = (
            fetcher
            if fleet is None
            else ClaimedFetcher(fetcher, fleet, total_timeout=cfg.sts.fetch_timeout)
        )
        sts = StsSource(
            shared,
            resolver,
            policy_fetcher,
            cfg.sts,
            log=log,
            max_absent=cfg.server.max_destinations,
        )
        probe = ProbeSource(shared, claimed_prober(prober, claims, cfg.probe), cfg.probe, log=log)
        alerts = Alerts(log)
        self.alerts = alerts
        service = PolicyService(
            cfg.profiles,
            shared,
            DnsSource(resolver),
            sts,
            probe,
            lookup_budget=cfg.server.lookup_budget,
            dns_down=lambda: resolver.down,
            max_destinations=cfg.server.max_destinations,
            alerts=alerts,
            dane_temp_after=cfg.alerts.dane_temp_after,
            fresh_dane=DnsSource(FreshQueries(resolver)),
        )
        try:
            # Unreadable records are skipped with a log line each; only a store that
            # cannot be read at all stops the start.
            await sts.load()
            await probe.load()
            await service.load_overrides()
        except StoreError as exc:
            log.error("store: %s", exc)
            await store.close()
            return 1
        probe.on_change = service.invalidate
        sts.on_change = service.invalidate
        self.service = service
        server = SocketmapServer(service, cfg.server)
        admin = Admin(
            service,
            dane=service.dane,
            sts=sts,
            probe=probe,
            events=shared,
            reload=self.reload,
            clear_dns=resolver.clear,
            facts=Facts.of(cfg, self.started_at),
            listeners=server,
            fleet=fleet,
            monotonic=loop.time,
        )
        control = ControlServer.of(admin, cfg, lambda: self.config.control)
        metrics = None
        if cfg.metrics.listen is not None:
            collector = PolicydCollector(
                service=service,
                listeners=server,
                probe=probe,
                sts=sts,
                resolver=resolver,
                store=store,
                alerts=alerts,
                fleet=fleet,
            )
            metrics = MetricsServer(cfg.metrics.listen, collector)
        try:
            await server.start()
            await control.start()
            if metrics is not None:
                await metrics.start()
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            await control.close()  # removes only sockets this process bound
            await server.close()
            await fetcher.aclose()
            await store.close()
            return 1
        self.server = server
        self._spawn(watch_resolver(resolver, lambda: self.config.alerts, alerts), "resolver check")
        self._spawn(watch_sts(sts, lambda: self.config.alerts, alerts), "mta-sts staleness check")
        notifier = Notifier()
        for sig, handler in (
            (signal.SIGTERM, self._stop.set),
            (signal.SIGINT, self._stop.set),
            (signal.SIGHUP, self.request_reload),
        ):
            loop.add_signal_handler(sig, handler)
        self._spawn(probe.run(), "probe workers")
        if fleet is not None:
            sync = FleetSync(service)
            self._spawn(fleet.run(sync.apply, sync.resync), "fleet link")
        self._spawn(self._housekeeping(sts, probe, store), "housekeeping")
        self._spawn(service.writes.run(), "store write-behind")
        self._spawn(notifier.watchdog(self.tasks_alive), "watchdog")
        notifier.ready()
        for warning in config_warnings(cfg):
            log.warning("%s: %s", cfg.path, warning)
        log.info("policyd %s ready (store %s)", __version__, cfg.store.url.partition("://")[0])
        await self._stop.wait()
        notifier.stopping()
        log.info("stopping")
        await control.close()
        await admin.close()
        if metrics is not None:
            await metrics.close()
        await server.close()
        await self._tasks.cancel_all()
        await self._reloads.cancel_all()
        resolver.close()
        await fetcher.aclose()
        if fleet is not None:
            await fleet.close()
        await store.close()
        return 0

    def _spawn(self, coro: Coroutine[None, None, None], name: str) -> None:
        """Run a background task until shutdown (the task set logs one that fails)."""
        self._tasks.spawn(coro, name).add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._died.append(task.get_name())
            log.error(
                "%s died: the systemd watchdog is no longer fed, so systemd restarts policyd",
                task.get_name(),
            )

    def tasks_alive(self) -> bool:
        """No background task has died of an exception (they run until cancelled at
        shutdown; one that has nothing to do may return)."""
        return not self._died

    def request_reload(self) -> None:
        self._reloads.spawn(self.reload(), "reload")

    async def reload(self) -> bool:
        """SIGHUP: profiles, log level, [control] access, alerts and overrides apply at
        once; the tables a restart applies are named in a warning, never dropped silently."""
        try:
            new = load(self.config.path)
        except ConfigError as exc:
            log.error("reload: keeping the old configuration: %s", exc)
            return False
        later = [
            name for name in RESTART_TABLES if getattr(new, name) != getattr(self.config, name)
        ]
        if later:
            tables = ", ".join(f"[{name}]" for name in later)
            log.warning("reload: changes to %s take effect after a restart", tables)
        self.config = new
        set_log_level(new.log.level)
        self.service.set_profiles(new.profiles)
        self.service.dane_temp_after = new.alerts.dane_temp_after
        try:
            await self.service.load_overrides()
        except StoreError as exc:
            log.error("reload: configuration applied, overrides not reloaded: %s", exc)
            return False
        log.info("reloaded %s", new.path)
        return True

    def stop(self) -> None:
        self._stop.set()

    async def _housekeeping(self, sts: StsSource, probe: ProbeSource, store: Store) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            await housekeep(self.service, sts, probe, store)


async def housekeep(
    service: PolicyService, sts: StsSource, probe: ProbeSource, store: Store
) -> None:
    """One round of housekeeping. Each step on its own: one that fails (a damaged store, a
    bug) is logged and the others still run."""

    async def expire_overrides() -> None:
        service.expire_overrides()

    async def prune_probes() -> None:
        probe.prune()

    async def delete_expired() -> None:
        if isinstance(store, ExpiringStore):
            deleted = await store.delete_expired(time.time())
            if deleted:
                log.info("store: deleted %d expired records", deleted)

    steps: tuple[tuple[str, Callable[[], Awaitable[object]]], ...] = (
        ("expire overrides", expire_overrides),
        ("reload overrides", service.load_overrides),
        ("refresh mta-sts policies", sts.refresh_due),
        ("prune probe states", prune_probes),
        ("delete expired store records", delete_expired),
    )
    for name, step in steps:
        try:
            await step()
        except StoreError as exc:
            log.error("housekeeping: %s: store: %s", name, exc)
        except Exception:  # per-step boundary: the next steps must run
            log.exception("housekeeping: %s failed", name)


def config_warnings(config: Config) -> list[str]:
    """Settings that load but put mail at risk (``--check-config``, and at start)."""
    where = "[dns] nameservers" if config.dns.nameservers else "/etc/resolv.conf"
    configured = config.dns.nameservers or tuple(resolv_conf_nameservers())
    out = [
        f"{where}: {ns} is not on this host; policyd trusts the resolver's "
        "DNSSEC (AD bit), which anyone on the path to it can forge: run a validating "
        "resolver here (unbound) and name 127.0.0.1 in [dns] nameservers"
        for ns in remote_nameservers(configured)
    ]
    out += [
        f"[profiles.{p.name}] dry_run = true: Postfix is told NOTFOUND for every "
        "destination of this profile"
        for p in config.profiles
        if p.dry_run
    ]
    return out


def ask_cpu_slice(seconds: float) -> None:
    """[server] cpu_slice for the daemon's threads (policyd.adapters.cpu_slice): asked in the
    main thread before any other starts, since threads inherit it; 0 asks nothing."""
    if not seconds:
        return
    result = request_slice(seconds)
    if result.outcome is Outcome.SET:
        log.info("scheduler slice %.2f ms ([server] cpu_slice)", result.slice * 1e3)
    elif result.outcome is Outcome.REFUSED:
        log.warning(
            "[server] cpu_slice not applied (%s): the kernel's own slice is used, and on a "
            "busy host lookups may wait longer for a CPU (a systemd SystemCallFilter needs "
            "@resources or @system-service)",
            result.detail,
        )
    else:
        reason = {
            Outcome.IGNORED: "this kernel keeps its own slices (Linux 6.12 or later uses it)",
            Outcome.KEPT: f"{result.detail}, not the fair scheduler: left as it is",
            Outcome.UNSUPPORTED: f"not supported on {result.detail}",
        }[result.outcome]
        log.info("[server] cpu_slice not applied: %s", reason)


def raise_fd_limit() -> None:
    """Many Postfix processes keep a connection each; use the hard limit on descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


DESCRIPTION: Final = """\
Tell Postfix, per destination, how strictly to check TLS when sending mail:
DANE where DNSSEC allows, MTA-STS where the domain publishes it, and verified or
encrypted TLS where STARTTLS probes show it works. Postfix asks over
smtp_tls_policy_maps = socketmap:unix:/run/policyd/policyd.sock:postfix.
Usually started by systemd (systemctl start policyd); see policyd(8)."""

EPILOG: Final = """\
policyctl explain DOMAIN shows what Postfix is told and why; policyctl doctor
checks Postfix's settings, the sockets, the resolver and the store."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="policyd", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help=f"the configuration file, policyd.toml(5) (default {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="check the configuration file, print what is wrong or 'configuration ok', "
        "and exit (0: ok, 1: errors)",
    )
    parser.add_argument("--version", action="version", version=f"policyd {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, run: Callable[[Config], int] | None = None) -> int:
    args = parse_args(argv)
    config = config_or_exit(
        "policyd", args.config, check_only=args.check_config, warnings=config_warnings
    )
    if isinstance(config, int):
        return config
    setup_logging("policyd", config.log.level)
    if os.geteuid() == 0:
        log.warning(
            "running as root: policyd needs no privileges. Run it as its own user "
            "(systemd/policyd.service runs it as policyd with the postfix group)."
        )
    raise_fd_limit()
    if run is not None:
        return run(config)
    ask_cpu_slice(config.server.cpu_slice)
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        import uvloop
    except ImportError:  # uvloop is optional: the stock loop works, only slower
        return asyncio.run(Daemon(config).run())
    return int(uvloop.run(Daemon(config).run()))


if __name__ == "__main__":
    sys.exit(main())

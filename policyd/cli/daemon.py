"""``policyd``: the daemon's entry point and composition root.

Wires config -> store -> DNS/MTA-STS/probe sources -> service -> listeners, then runs until
SIGTERM. SIGHUP reloads the configuration and the overrides without dropping connections
(a bad new file is logged and the old configuration kept). systemd is told READY=1 once
the listeners are up, WATCHDOG=1 while the loop and every background task are alive (a
task that dies stops the pings, so systemd restarts the daemon), and STOPPING=1 on the way
out. Housekeeping runs each of its steps on its own: a failing step is logged and the
others, and the next round, go on.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Final

from policyd import __version__
from policyd.adapters.dns import Resolver
from policyd.adapters.https import PolicyFetcher
from policyd.adapters.store import ExpiringStore, Store, StoreError
from policyd.adapters.store_sqlite import SqliteStore
from policyd.config import DEFAULT_PATH, Config, ConfigError, load
from policyd.server.control import ControlServer
from policyd.server.notify import Notifier
from policyd.server.socketmap import SocketmapServer
from policyd.service import PolicyService
from policyd.sources.dane import DaneSource
from policyd.sources.probe import ProbeSource, make_prober
from policyd.sources.sts import StsSource, txt_lookup_from

log = logging.getLogger("policyd")

HOUSEKEEPING_INTERVAL: Final = 60.0  # seconds: override expiry, MTA-STS refresh check


async def open_store(url: str) -> Store:
    if url.startswith(("redis://", "rediss://", "unix://")):
        from policyd.adapters.store_redis import RedisStore

        return await RedisStore.open(url)
    return await SqliteStore.open(url)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = 0.0

    async def run(self) -> int:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self.started_at = loop.time()
        try:
            store = await open_store(cfg.store.url)
        except StoreError as exc:
            log.error("store: %s", exc)
            return 1
        resolver = Resolver(cfg.dns)
        try:
            fetcher = PolicyFetcher(cfg.tls.ca_file, cfg.sts_timeouts)
            prober = make_prober(cfg.probe, cfg.tls.ca_file)
        except (OSError, ValueError) as exc:
            log.error("tls.ca_file %s: %s", cfg.tls.ca_file, exc)
            await store.close()
            return 1
        sts = StsSource(store, txt_lookup_from(resolver), fetcher, cfg.sts, log=log)
        probe = ProbeSource(store, prober, cfg.probe, log=log)
        try:
            await sts.load()
            await probe.load()
        except StoreError as exc:
            log.error("store: %s", exc)
            await store.close()
            return 1
        service = PolicyService(
            cfg.profiles,
            store,
            DaneSource(resolver),
            sts,
            probe,
            lookup_budget=cfg.server.lookup_budget,
            dns_down=lambda: resolver.down,
            max_destinations=cfg.server.max_destinations,
        )
        await service.load_overrides()
        probe.on_change = service.invalidate
        sts.on_change = service.invalidate
        self.service = service
        self.resolver = resolver
        server = SocketmapServer(service, cfg.server)
        control = ControlServer(self, cfg)
        try:
            await server.start()
            await control.start()
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            await store.close()
            return 1
        self.server = server
        notifier = Notifier()
        for sig, handler in (
            (signal.SIGTERM, self._stop.set),
            (signal.SIGINT, self._stop.set),
            (signal.SIGHUP, self.request_reload),
        ):
            loop.add_signal_handler(sig, handler)
        self._spawn(probe.run())
        self._spawn(self._housekeeping(sts, probe, store))
        self._spawn(service.writes.run())
        watchdog = loop.create_task(notifier.watchdog(self.tasks_alive))
        notifier.ready()
        log.info("policyd %s ready (store %s)", __version__, cfg.store.url.partition("://")[0])
        await self._stop.wait()
        notifier.stopping()
        log.info("stopping")
        await control.close()
        await server.close()
        watchdog.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(watchdog, *self._tasks, return_exceptions=True)
        resolver.close()
        await fetcher.aclose()
        await store.close()
        return 0

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(_report_crash)
        self._tasks.append(task)

    def tasks_alive(self) -> bool:
        """Every background task still runs (they end only by cancellation at shutdown)."""
        return not any(task.done() for task in self._tasks)

    def request_reload(self) -> None:
        asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> bool:
        """SIGHUP: new profiles, log level and overrides; listeners need a restart."""
        try:
            new = load(self.config.path)
        except ConfigError as exc:
            log.error("reload: keeping the old configuration: %s", exc)
            return False
        if new.server.socketmap != self.config.server.socketmap:
            log.warning("reload: listener changes take effect after a restart")
        self.config = new
        set_log_level(new.log.level)
        self.service.set_profiles(new.profiles)
        await self.service.load_overrides()
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


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "background task failed: %r; the systemd watchdog is no longer fed, so systemd "
            "restarts policyd",
            task.exception(),
        )


def set_log_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def setup_logging(level: str) -> None:
    # Postfix style: "policyd[PID]: message"; journald or the terminal adds the time.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"policyd[{os.getpid()}]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_log_level(level)


def raise_fd_limit() -> None:
    """Many Postfix processes keep a connection each; use the hard limit on descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="policyd", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_PATH, help="configuration file (TOML)")
    parser.add_argument(
        "--check-config", action="store_true", help="check the configuration and exit"
    )
    parser.add_argument("--version", action="version", version=f"policyd {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, run: Callable[[Config], int] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"policyd: {exc}", file=sys.stderr)
        return 1
    if args.check_config:
        print(f"policyd: {config.path}: configuration ok")
        return 0
    setup_logging(config.log.level)
    raise_fd_limit()
    if run is not None:
        return run(config)
    try:
        import uvloop
    except ImportError:  # uvloop is optional: the stock loop works, only slower
        return asyncio.run(Daemon(config).run())
    return int(uvloop.run(Daemon(config).run()))


if __name__ == "__main__":
    sys.exit(main())

"""systemd notification (sd_notify(3)) via sdnotify: READY, WATCHDOG, STOPPING, STATUS.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so ``make run`` needs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self._enabled else None

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ready(self) -> None:
        self._send("READY=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC (sd_watchdog_enabled(3) advice), or None when unset."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid and pid != str(os.getpid()):
            return None
        return int(usec) / 1_000_000 / 2

    async def watchdog(
        self,
        alive: Callable[[], bool] = lambda: True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Ping while the event loop runs and ``alive()`` holds: a stalled loop or a dead
        background task misses pings, and systemd restarts us (WatchdogSec=)."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        while alive():
            self._send("WATCHDOG=1")
            await sleep(interval)
        logging.getLogger("policyd").error(
            "a background task died: no more watchdog pings, systemd will restart policyd"
        )

"""The fleet link over Redis: work claims, and change messages every host applies at once.

Keys and channel, under the store's prefix (``policyd:``) and a version of their own:

* ``policyd:v1:claim:<kind>:<claim>``: a lease, ``SET <token> NX PX <lease ms>``. The
  holder does the work (``probe:[192.0.2.25]:25``, ``sts:example.com``); only the holder
  deletes it, by token (a compare-and-delete script), so a holder that outlived its lease
  never removes its successor's.
* ``policyd:v1:result:<kind>:<result>``: the outcome, ``SET PX <keep ms>``
  (``probe:[192.0.2.25]:25:mx.example.com``, ``sts:example.com``). Written before the
  lease is released, so a host that sees the lease gone finds the result.
* ``policyd:v1:changes``: the channel of :mod:`policyd.codec.fleet` messages (an override
  set or deleted, a flush).

A host that wants work done reads the result, else tries the lease, else polls (50 ms,
doubling to 500 ms) until one of them appears, for at most the lease plus a second: a
holder that died is replaced when its lease runs out. Redis is never on the lookup path:
claims are taken by background probes and fetches only.

Redis down is not mail down. The subscriber notices a lost link (a closed connection, or
no reply to its PING for :data:`SILENCE_LIMIT`), logs one line, and reconnects with
exponential backoff; while the link is down claims run the work here at once (with the
local one-per-claim rule) and publishing is skipped. Every host re-reads the overrides
when its link comes back, which covers the messages it missed.

URLs are the store's (:mod:`policyd.adapters.redis_url`, Sentinel included); the connection is a
separate client with short timeouts, so a stuck server delays a claim by at most
:data:`COMMAND_TIMEOUT`, never a lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from policyd.adapters.claims import ClaimBusy, Job, LocalClaims, WorkKind
from policyd.adapters.redis_url import client_from_url, describe_url
from policyd.adapters.store_redis import DEFAULT_PREFIX
from policyd.codec.fleet import Change, change_from_json, change_to_json
from policyd.settings import DEFAULT_REDIS_CONNECTIONS

KEY_VERSION: Final = "v1"  # in every fleet key: a new layout gets new keys, never a clash
CONNECT_TIMEOUT: Final = 1.0  # seconds; a claim falls back to local work after this
COMMAND_TIMEOUT: Final = 1.0  # seconds per command; claims are background work
POLL_FIRST: Final = 0.05  # seconds between result checks while another host works ...
POLL_MAX: Final = 0.5  # ... doubling up to this
WAIT_GRACE: Final = 1.0  # seconds waited past a lease before giving up on its holder
LISTEN_POLL: Final = 1.0  # seconds per subscriber read
PING_INTERVAL: Final = 2.0  # seconds between PINGs on the subscriber connection
SILENCE_LIMIT: Final = 5.0  # seconds without any reply before the link counts as down
RECONNECT_FIRST: Final = 0.5  # seconds before the first reconnect ...
RECONNECT_MAX: Final = 30.0  # ... doubling up to this (with +-20 % jitter)
CLOSE_TIMEOUT: Final = 2.0  # seconds to close the connections at shutdown

# Only while the lease still holds our token (KEYS[1] lease, ARGV[1] token): delete it, or
# with ARGV[2] > 0 keep it that many more milliseconds (rest between two sessions).
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if tonumber(ARGV[2]) > 0 then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
  return redis.call('DEL', KEYS[1])
end
return 0
"""

log = logging.getLogger("policyd.fleet")

ChangeHandler = Callable[[Change], Awaitable[None]]
ResyncHandler = Callable[[], Awaitable[None]]


# How a claimed piece of work was settled: done here under a fleet lease; taken from
# another host's result; done here without Redis (link down or failing); given up after
# waiting past the holder's lease.
SETTLED: Final = ("worked", "shared", "local", "busy")


@dataclass(slots=True)
class FleetCounters:
    """Since start; ``policyctl status`` and the metrics show them."""

    work: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> SETTLED -> n
    published: int = 0  # change messages sent
    received: int = 0  # change messages applied
    publish_failures: int = 0  # change messages not sent (the periodic reload covers them)

    def settled(self, kind: WorkKind, how: str) -> None:
        self.work.setdefault(kind.value, dict.fromkeys(SETTLED, 0))[how] += 1


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisFleet:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        name: str,
        prefix: str = DEFAULT_PREFIX,
        origin: str = "",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._name = name
        self._base = f"{prefix}{KEY_VERSION}:"
        self.channel = f"{self._base}changes"
        self.origin = origin or f"{socket.gethostname()}[{os.getpid()}]"
        self._monotonic = monotonic
        self._local = LocalClaims(grace=WAIT_GRACE)
        self.up = False
        self._down_reason: str | None = None  # logged once per outage
        self.counters = FleetCounters()

    @classmethod
    def from_url(
        cls,
        url: str,
        max_connections: int = DEFAULT_REDIS_CONNECTIONS,
        *,
        prefix: str = DEFAULT_PREFIX,
    ) -> RedisFleet:
        """No I/O here: :meth:`run` connects, and reconnects for as long as it runs. At most
        ``max_connections`` at once (the subscription holds one); a call finding none free
        waits COMMAND_TIMEOUT, then fails like a Redis that is down."""
        client = client_from_url(
            url,
            max_connections=max_connections,
            pool_timeout=COMMAND_TIMEOUT,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, name=describe_url(url), prefix=prefix)

    def claim_key(self, kind: str, claim: str) -> str:
        return f"{self._base}claim:{kind}:{claim}"

    def result_key(self, kind: str, result: str) -> str:
        return f"{self._base}result:{kind}:{result}"

    # -- work claims -------------------------------------------------------------------

    async def once(self, job: Job) -> str:
        """See :class:`policyd.adapters.claims.WorkClaims`. Work for one claim is also
        serialised (and rested) on this host first, so local askers do not poll Redis for
        each other, and the spacing holds while Redis is down."""
        return await self._local.once(replace(job, work=_SharedWork(self, job).run))

    async def _release(self, key: str, token: str, rest: float = 0.0) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._client.eval(_RELEASE, 1, key, token, _ms(rest) if rest > 0 else 0)

    # -- change messages ---------------------------------------------------------------

    async def publish(self, change: Change) -> None:
        """Tell every host (this one too); never raises. A message not sent is counted:
        the others see the change at their next periodic reload."""
        if not self.up:
            self.counters.publish_failures += 1
            return
        text = change_to_json(dataclasses.replace(change, origin=self.origin))
        try:
            await self._client.publish(self.channel, text)
        except (RedisError, OSError):
            self.counters.publish_failures += 1
            return
        self.counters.published += 1

    async def run(self, on_change: ChangeHandler, on_connect: ResyncHandler) -> None:
        """Subscribe and apply change messages until cancelled; reconnect with backoff.
        ``on_connect`` runs after each (re)subscription, to catch up on missed changes."""
        pause = RECONNECT_FIRST
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._set_state(up=True)
                pause = RECONNECT_FIRST
                await on_connect()
                await self._listen(pubsub, on_change)
            except (RedisError, OSError) as exc:
                self._set_state(up=False, reason=str(exc) or type(exc).__name__)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed in redis 8
            await asyncio.sleep(pause * random.uniform(0.8, 1.2))
            pause = min(pause * 2, RECONNECT_MAX)

    async def _listen(self, pubsub: PubSub, on_change: ChangeHandler) -> None:
        heard = self._monotonic()
        next_ping = heard
        while True:
            now = self._monotonic()
            if now >= next_ping:
                await pubsub.ping()
                next_ping = now + PING_INTERVAL
            # Not ignore_subscribe_messages: it drops the PONG too, which proves the link alive.
            message = await pubsub.get_message(timeout=LISTEN_POLL)
            now = self._monotonic()
            if message is not None:
                heard = now
                if message.get("type") == "message":
                    await self._deliver(str(message.get("data")), on_change)
            elif now - heard > SILENCE_LIMIT:
                raise ConnectionError(f"no reply from redis for {SILENCE_LIMIT:g}s")

    async def _deliver(self, text: str, on_change: ChangeHandler) -> None:
        try:
            change = change_from_json(text)
        except ValueError as exc:
            log.warning("fleet: ignoring a malformed change message: %s", exc)
            return
        if change.origin == self.origin:
            return  # this host applied its own change already
        self.counters.received += 1
        await on_change(change)

    def _set_state(self, *, up: bool, reason: str = "") -> None:
        """One log line per change of state, not one per failed reconnect."""
        if up:
            if not self.up:
                log.info("fleet: link to %s up (channel %s)", self._name, self.channel)
            self.up = True
            self._down_reason = None
            return
        self.up = False
        if self._down_reason is None:
            self._down_reason = reason
            log.warning(
                "fleet: link to %s down: %s; answering from memory and local evidence, "
                "reconnecting with backoff",
                self._name,
                reason,
            )

    @property
    def state(self) -> str:
        return "up" if self.up else "down"

    async def close(self) -> None:
        """Bounded: closing connections to a stuck server must not stall a shutdown."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._client.aclose()


class _SharedWork:
    """One claimed piece of work: take the result, or the lease, or wait for either."""

    def __init__(self, fleet: RedisFleet, job: Job) -> None:
        self._fleet = fleet
        self._job = job
        self._claim_key = fleet.claim_key(job.kind, job.claim)
        self._result_key = fleet.result_key(job.kind, job.result)

    async def run(self) -> str:
        fleet, kind = self._fleet, self._job.kind
        if not fleet.up:
            fleet.counters.settled(kind, "local")
            return await self._job.work()
        try:
            return await self._shared()
        except _Unavailable:
            fleet.counters.settled(kind, "local")
            return await self._job.work()

    async def _shared(self) -> str:
        fleet, client, job = self._fleet, self._fleet._client, self._job
        token = secrets.token_hex(16)
        deadline = fleet._monotonic() + job.lease + job.rest + WAIT_GRACE
        pause = POLL_FIRST
        while True:
            try:
                found = await client.get(self._result_key)
                if found is not None:
                    fleet.counters.settled(job.kind, "shared")
                    return str(found)
                if await client.set(self._claim_key, token, nx=True, px=_ms(job.lease)):
                    # The holder before us may have written its result between our GET
                    # and our SET: look once more before doing the work again.
                    found = await client.get(self._result_key)
                    if found is not None:
                        await fleet._release(self._claim_key, token)
                        fleet.counters.settled(job.kind, "shared")
                        return str(found)
                    break
            except (RedisError, OSError) as exc:
                raise _Unavailable from exc
            if fleet._monotonic() + pause > deadline:
                fleet.counters.settled(job.kind, "busy")
                raise ClaimBusy(f"{job}: held elsewhere for over {job.lease:g}s")
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL_MAX)
        fleet.counters.settled(job.kind, "worked")
        try:
            value = await job.work()
        except BaseException:
            # Failed or cancelled: let the next asker take over at once, not at expiry.
            await asyncio.shield(fleet._release(self._claim_key, token))
            raise
        with contextlib.suppress(RedisError, OSError):  # the work is done; sharing is a bonus
            if job.keep > 0:
                await client.set(self._result_key, value, px=_ms(job.keep))
        await fleet._release(self._claim_key, token, job.rest)
        return value


class _Unavailable(Exception):
    """Redis failed before any work began: do it here instead."""

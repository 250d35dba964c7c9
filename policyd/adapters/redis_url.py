"""Redis URLs -> redis-py asyncio clients, for the store and the fleet link.

Forms:

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS, and
  ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``: as redis-py's ``from_url``
  parses them;
* ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``: the
  primary of ``service`` as the listed Sentinels report it (port 26379 by default), through
  redis-py's Sentinel client, which asks them again after a failover. The password is the
  primary's; Sentinels that require one of their own are not supported.

Errors in the URL are :class:`~policyd.adapters.store.StoreError` naming it without its
password.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from policyd.adapters.store import StoreError
from policyd.settings import REDIS_SCHEMES, is_redis_url

SENTINEL_SCHEME: Final = "redis+sentinel"
SENTINEL_PORT: Final = 26379  # redis-sentinel's default port
MAX_SENTINELS: Final = 16


def describe_url(url: str) -> str:
    """The URL for messages and logs, without the password."""
    if "://" not in url:
        return "<not a URL>"
    scheme, _, rest = url.partition("://")
    if scheme == SENTINEL_SCHEME:
        return f"{scheme}://{rest.rpartition('@')[2]}"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable redis URL>"
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def client_from_url(
    url: str, *, max_connections: int, pool_timeout: float, **options: Any
) -> aioredis.Redis:
    """A client (no I/O yet) with redis-py connection ``options`` (timeouts, retry,
    decode_responses); StoreError for a URL that is not one of the forms above.

    Its pool holds at most ``max_connections`` (review L8: before redis-py 8 the asyncio
    pool had no bound). A call finding them all in use waits up to ``pool_timeout`` seconds
    for one (BlockingConnectionPool), then fails with a ConnectionError, a RedisError like
    any other: never an unbounded wait. Sentinel's pool has no blocking form: there a call
    at the bound fails at once ("Too many connections")."""
    name = describe_url(url)
    if not is_redis_url(url):
        expected = ", ".join(f"{s}://" for s in REDIS_SCHEMES)
        raise StoreError(f"not a redis URL: {name} (expected one of {expected})")
    try:
        if url.startswith(f"{SENTINEL_SCHEME}://"):
            return _sentinel_client(url, {**options, "max_connections": max_connections})
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout, **options
        )
        return aioredis.Redis.from_pool(pool)  # the client closes the pool it owns
    except (ValueError, RedisError) as exc:  # redis-py rejects a malformed URL with either
        raise StoreError(f"{name}: {exc}") from exc


def _sentinel_client(url: str, options: dict[str, Any]) -> aioredis.Redis:
    rest = url.partition("://")[2]
    userinfo, at, where = rest.rpartition("@")
    hosts, _, path = where.partition("/")
    service, _, db = path.partition("/")
    if not service:
        raise ValueError("no service name: redis+sentinel://HOST[:PORT][,...]/SERVICE[/DB]")
    sentinels = [_host_port(item) for item in hosts.split(",")]
    if not 1 <= len(sentinels) <= MAX_SENTINELS:
        raise ValueError(f"between 1 and {MAX_SENTINELS} sentinels")
    primary: dict[str, Any] = dict(options)
    if db:
        if not db.isdigit():
            raise ValueError(f"database {db!r} is not a number")
        primary["db"] = int(db)
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:
            primary["password"] = unquote(password)
        if user:
            primary["username"] = unquote(user)
    # The Sentinels themselves get only the timeouts, never the primary's password.
    probe_opts = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # typed in redis 8
        sentinels, sentinel_kwargs={**probe_opts, "decode_responses": True}
    )
    client: aioredis.Redis = sentinel.master_for(unquote(service), **primary)
    return client


def _host_port(item: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    if not host:
        raise ValueError(f"empty sentinel host in {item!r}")
    if not port:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"bad sentinel port in {item!r}")
    return host, int(port)

"""Redis URLs, Sentinel included: parsed into clients without I/O, shown without passwords."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool

from policyd.adapters.redis_url import (
    SENTINEL_PORT,
    client_from_url,
    describe_url,
)
from policyd.adapters.store import Kind, StoreError
from policyd.adapters.store_redis import RedisStore
from policyd.settings import is_redis_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@db.example:6380/2", "redis://db.example:6380/2"),
        ("rediss://user:s3cret@db.example", "rediss://db.example"),
        ("unix://:s3cret@/run/redis/redis.sock?db=1", "unix:///run/redis/redis.sock"),
        (
            "redis+sentinel://:s3cret@s1.example:26380,s2.example/mymaster/3",
            "redis+sentinel://s1.example:26380,s2.example/mymaster/3",
        ),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert describe_url(url) == shown
    assert is_redis_url(url)


async def test_a_sentinel_url_asks_the_sentinels_for_the_primary() -> None:
    client = client_from_url(
        "redis+sentinel://:pw%40x@s1.example:26380,[2001:db8::1],s3.example:1/mymaster/3",
        max_connections=7,
        pool_timeout=1.0,
        socket_timeout=1.0,
        decode_responses=True,
    )
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.max_connections == 7
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["password"] == "pw@x"
    assert pool.connection_kwargs["db"] == 3
    sentinels = pool.sentinel_manager.sentinels
    found = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in sentinels
    ]
    assert found == [("s1.example", 26380), ("2001:db8::1", SENTINEL_PORT), ("s3.example", 1)]
    # The Sentinels get the timeouts, never the primary's password.
    assert all(
        "password" not in s.connection_pool.connection_kwargs
        or s.connection_pool.connection_kwargs["password"] is None
        for s in sentinels
    )
    await client.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///var/lib/policyd.db",
        "redis+sentinel://s1.example",  # no service name
        "redis+sentinel://s1.example:0/mymaster",
        "redis+sentinel://s1.example:http/mymaster",
        "redis+sentinel://,/mymaster",
        "redis+sentinel://s1.example/mymaster/zero",
    ],
)
def test_bad_urls_are_store_errors_without_the_password(url: str) -> None:
    with pytest.raises(StoreError) as err:
        client_from_url(url.replace("://", "://:s3cret@", 1), max_connections=1, pool_timeout=1.0)
    assert "s3cret" not in str(err.value)


# -- a bounded pool (security review L8) ---------------------------------------------------


def test_a_redis_url_gets_a_bounded_blocking_pool() -> None:
    client = client_from_url("redis://db.example/2", max_connections=5, pool_timeout=2.5)
    pool = client.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout) == (5, 2.5)


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A 'Redis' that accepts connections and never answers (a stuck server)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_an_exhausted_pool_is_a_store_error_not_a_hang() -> None:
    async with silent_server() as port:
        client = client_from_url(
            f"redis://127.0.0.1:{port}/0",
            max_connections=1,
            pool_timeout=0.05,  # how long a call waits for a free connection
            socket_timeout=60.0,  # the first call holds the only one, waiting for a reply
            decode_responses=True,
        )
        store = RedisStore(client, name="stuck")
        first = asyncio.create_task(store.get(Kind.STS, "a.example"))
        while not client.connection_pool._in_use_connections:
            await asyncio.sleep(0)
        with pytest.raises(StoreError, match="No connection available"):
            await store.get(Kind.STS, "b.example")
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError, StoreError):
            await first
        await client.aclose()

"""Fixtures of the cost plugin's tests: a PostgreSQL schema and a Redis key prefix of their own.

Both servers are the real ones the machines run (127.0.0.1:5432, user ``postgres``,
database ``test``; 127.0.0.1:6379): never a fake. Each test gets its own schema or
prefix, dropped or deleted after it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from collections.abc import AsyncIterator

import pytest

PG_DSN = os.environ.get("FLOODGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FLOODGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema name (dropped with everything in it after the test)."""
    import asyncpg

    name = f"fg_test_{os.urandom(5).hex()}"
    yield name
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def old_table(schema: str, ddl: str) -> None:
    """Create ``schema`` and in it a ``usage`` table as an older version made it (``ddl``: SQLite's text)."""
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(ddl.replace("REAL", "DOUBLE PRECISION"))
    finally:
        await conn.close()


def blocking_client() -> object:
    """A client whose callers wait for a free connection (as a gateway's must) instead of failing."""
    import redis.asyncio as redis

    return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=20))


@pytest.fixture
async def redis_prefix() -> AsyncIterator[tuple[object, str]]:
    """(a ``redis.asyncio.Redis`` client, a key prefix of this test's own); its keys deleted after."""

    client = blocking_client()
    prefix = f"fg-test:{os.urandom(5).hex()}"
    yield client, prefix
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(autouse=True)
def _cached_distributions(monkeypatch: pytest.MonkeyPatch) -> None:
    # The loader calls importlib.metadata.packages_distributions() (a scan of every installed
    # package, ~0.2-1 s) for each core plugin of every app built; cache it so these tests stay fast.
    monkeypatch.setattr(importlib.metadata, "packages_distributions", _packages_distributions)


_packages_distributions = functools.cache(importlib.metadata.packages_distributions)

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from voxmesh.testing.servers import redis_server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # One real redis-server per test module (starting one per test costs more than the tests).
    with redis_server(pathlib.Path(tmp_path_factory.mktemp("redis")), appendonly=False) as url:
        yield url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()

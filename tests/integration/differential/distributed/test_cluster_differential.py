"""The differential test across two replicas (NATS JetStream + Redis): the sessions are spread
over both, every REST call (publish, retire, rollback, relabel, config-at, log) goes to either
one, so policies travel through ``CP_POLICY``, per-session actions through owner routing, and
the invariants of ``test_differential.py`` must hold all the same.
Replay: ``DIFF_SEED=<n> .venv/bin/pytest tests/integration/differential/distributed -q``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.integration.differential.test_differential import (
    ACK_TIMEOUT_S,
    Run,
    run_scenario,
    seeds,
)
from tests.integration.distributed.conftest import Cluster

DEFAULT_SEEDS = (99,)
STEPS = int(os.environ.get("DIFF_STEPS", "20"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", seeds(DEFAULT_SEEDS))
async def test_two_replicas_record_what_the_upstream_runs(
    seed: int, cluster: Cluster, capsys: Any
) -> None:
    # (no per-token limit on expensive reads: the test's log and config-at reads after every
    # step are an auditor's instrument, not load)
    a = await cluster.start("node-a", ack_timeout_s=ACK_TIMEOUT_S, expensive_read_rate_per_s=0)
    b = await cluster.start("node-b", ack_timeout_s=ACK_TIMEOUT_S, expensive_read_rate_per_s=0)
    with capsys.disabled():
        await run_scenario(Run(seed, a, cluster.emulator, replicas=[a, b]), STEPS)

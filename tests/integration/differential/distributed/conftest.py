"""The cluster variant runs on the distributed suite's fixtures: two replicas in this event
loop on one real NATS JetStream and one real Redis, the emulator as upstream."""

from tests.integration.distributed.conftest import cluster, emulator

__all__ = ["cluster", "emulator"]

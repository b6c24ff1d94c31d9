"""Live sessions: what the push engine holds for each session on this replica.

A ``LiveSession`` is the session's record, its sans-I/O ``PushState``, the ``Transport`` its
frames are written to (the gateway's upstream socket, or a control channel) and its dialect,
plus the rollout bookkeeping the engine keeps per policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.push.protocol import Push, PushState
from policies.fields import Config
from policies.provenance import PolicyRef
from policies.resolve import Inputs
from policies.selectors import Target
from sessions.dialects.base import Dialect
from sessions.model import Session
from sessions.versionlog.core import Canonical

__all__ = ["CONGESTED_BYTES", "LiveSession", "Transport", "write_buffer_size"]

CONGESTED_BYTES = 256 * 1024  # unsent bytes past which a socket gets a worker, not inline writes


def write_buffer_size(ws: Any) -> int:
    """Unsent bytes buffered for an aiohttp WebSocket (server or client); 0 when unknown.

    aiohttp exposes no public accessor on client sockets, so this reads the writer's transport.
    """
    transport = getattr(getattr(ws, "_writer", None), "transport", None)
    if transport is None:
        return 0
    try:
        return int(transport.get_write_buffer_size())
    except (AttributeError, RuntimeError):
        return 0


class Transport(Protocol):
    """Where a session's pushes are written (the upstream socket, or a control channel)."""

    acknowledging: bool

    def congested(self) -> bool: ...

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        """Write one frame; raises ConnectionError when the socket is gone."""
        ...


@dataclass(eq=False, slots=True)
class LiveSession:
    """A session held by this replica: its record, push state, socket and dialect."""

    session: Session
    push: PushState
    transport: Transport
    dialect: Dialect
    locks: Mapping[str, PolicyRef] = field(default_factory=dict)
    # rollout bookkeeping: policy id -> (version, variant, status)
    policy_status: dict[str, tuple[int, str | None, str]] = field(default_factory=dict)
    # a version's status before a push made it pending again (restored if that is refused)
    prior_status: dict[str, str] = field(default_factory=dict)
    worker: asyncio.Task[None] | None = None
    # the last config logged and its encoding (configs are replaced, never changed in place)
    logged_config: tuple[Config, Canonical] | None = None
    # the session id as the version log's entries spell it (encoded once: ``session_text``)
    id_text: bytes | None = None
    # what the session resolves from, keyed once (labels and client config are replaced on
    # change, never changed in place: `inputs()` compares them by identity)
    resolved_from: Inputs | None = None
    # the generation of the last policy event that resolved the session (push.fanout): an
    # older event's fan-out still walking skips it
    marked: int = 0
    # whether the engine holds it now (``PushEngine.live[id] is self``: attach sets it, detach
    # or another session attached under the same id clears it); the fan-out asks it per
    # session instead of looking the id up in the engine's dict
    attached: bool = False
    # acknowledging sessions: the fields of each push (by version) that ended ``unverified``
    # with no answer confirmed, still in doubt (``sending.follow_doubts``: the session's
    # ``in_doubt``, as config-at's ``doubts``)
    doubted: dict[int, set[str]] = field(default_factory=dict)

    @property
    def target(self) -> Target:
        return self.inputs().target

    def inputs(self) -> Inputs:
        s, memo = self.session, self.resolved_from
        labels, client = s.labels, s.client_config
        if memo is None or memo.target.labels is not labels or memo.client_config is not client:
            memo = self.resolved_from = Inputs.of(
                Target(s.bucket_key, s.kind, s.model, labels), client
            )
        return memo

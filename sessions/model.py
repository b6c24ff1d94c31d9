"""The session record: one live (or recently ended) voice session and the versions it runs.

A ``Session`` is plain mutable data with no behaviour that reads time or does I/O; the push
engine mutates it and hands it to a ``Registry`` to store. ``to_dict()`` is its JSON shape
(the REST API's session object, and what the Redis registry stores); ``from_dict()`` inverts
it exactly (lists come back as tuples, provenance as ``PolicyRef``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from policies.fields import Config, Value, to_json
from policies.provenance import PolicyRef

__all__ = ["SESSION_KINDS", "Session", "SessionState"]

SESSION_KINDS: Final = ("streaming-v3", "voice-agent-v1")


class SessionState(StrEnum):
    """Where a session stands relative to its desired config version."""

    SYNCED = "synced"  # the desired version is applied (acked, or sent where no ack exists)
    PENDING = "pending"  # a newer version is desired or in flight
    UNVERIFIED = "unverified"  # sent, and the upstream gives no way to confirm it
    REJECTED = "rejected"  # the upstream refused the desired version; last good config kept
    ENDED = "ended"  # terminal


@dataclass(slots=True)
class Session:
    id: str
    kind: str
    model: str
    labels: Mapping[str, str] = field(default_factory=dict)  # replaced, never changed in place
    node: str = ""
    client_config: Mapping[str, Value] = field(default_factory=dict)  # replaced, likewise
    effective_config: Config = field(default_factory=dict)
    # what the upstream runs as far as the control plane knows (the push state's base):
    # acknowledged pushes and answered client updates; Streaming v3: what was sent (no
    # acknowledgement exists). None: not known (a record written before this field existed)
    running_config: Config | None = None
    # canonical fields ``running_config`` may have wrong (Streaming v3 through the gateway: an
    # upstream Warning no update explains came after the last update that set them; a later
    # update setting a field ends its doubt): the state is not ``synced`` while any is
    in_doubt: tuple[str, ...] = ()
    provenance: Mapping[str, PolicyRef] = field(default_factory=dict)
    applied: tuple[PolicyRef, ...] = ()
    desired_version: int = 0
    sent_version: int = 0
    acked_version: int = 0
    state: SessionState = SessionState.SYNCED
    created_at: float = 0.0
    updated_at: float = 0.0
    ended_at: float | None = None
    end_cause: str | None = None
    upstream_id: str | None = None
    # the app that registered it on the control channel (its token's team, else the token's
    # digest prefix; None: the gateway). It stays with the id for the life of its record:
    # another app may not re-register it
    registered_by: str | None = None
    # the session whose call this one continues (a Voice Agent session.resume through the
    # gateway): bucketing by session id (rollout %, waves, experiments) uses its id
    bucket_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SESSION_KINDS:
            raise ValueError(f"unknown session kind {self.kind!r} (known: {SESSION_KINDS})")
        self.state = SessionState(self.state)

    @property
    def bucket_key(self) -> str:
        """What ``bucket_by: session_id`` hashes: the id of the call's first session."""
        return self.bucket_id or self.id

    @property
    def live(self) -> bool:
        return self.state is not SessionState.ENDED

    def copy(self) -> Session:
        """An independent copy (config values are immutable, so one level deep suffices)."""
        return Session(
            id=self.id,
            kind=self.kind,
            model=self.model,
            labels=dict(self.labels),
            node=self.node,
            client_config=dict(self.client_config),
            effective_config=dict(self.effective_config),
            running_config=None if self.running_config is None else dict(self.running_config),
            in_doubt=self.in_doubt,
            provenance=dict(self.provenance),
            applied=self.applied,
            desired_version=self.desired_version,
            sent_version=self.sent_version,
            acked_version=self.acked_version,
            state=self.state,
            created_at=self.created_at,
            updated_at=self.updated_at,
            ended_at=self.ended_at,
            end_cause=self.end_cause,
            upstream_id=self.upstream_id,
            registered_by=self.registered_by,
            bucket_id=self.bucket_id,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able shape: tuples become lists, versions nest under ``versions``."""
        return {
            "id": self.id,
            "kind": self.kind,
            "model": self.model,
            "labels": dict(self.labels),
            "node": self.node,
            "state": str(self.state),
            "client_config": to_json(self.client_config),
            "effective_config": to_json(self.effective_config),
            "running_config": (
                None if self.running_config is None else to_json(self.running_config)
            ),
            "in_doubt": list(self.in_doubt),
            "provenance": {name: ref.as_dict() for name, ref in self.provenance.items()},
            "applied": [ref.as_dict() for ref in self.applied],
            "versions": {
                "desired": self.desired_version,
                "sent": self.sent_version,
                "acked": self.acked_version,
            },
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "ended_at": self.ended_at,
            "end_cause": self.end_cause,
            "upstream_id": self.upstream_id,
            "registered_by": self.registered_by,
            "bucket_id": self.bucket_id,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Session:
        """Inverse of ``to_dict()``; raises ``KeyError`` / ``ValueError`` on a bad record."""
        versions = raw["versions"]
        return cls(
            id=str(raw["id"]),
            kind=str(raw["kind"]),
            model=str(raw["model"]),
            labels={str(k): str(v) for k, v in raw.get("labels", {}).items()},
            node=str(raw.get("node", "")),
            client_config=_config_in(raw.get("client_config", {})),
            effective_config=_config_in(raw.get("effective_config", {})),
            running_config=(
                None if raw.get("running_config") is None else _config_in(raw["running_config"])
            ),
            in_doubt=tuple(str(name) for name in raw.get("in_doubt") or ()),
            provenance={
                str(name): PolicyRef.from_dict(ref)
                for name, ref in raw.get("provenance", {}).items()
            },
            applied=tuple(PolicyRef.from_dict(ref) for ref in raw.get("applied", ())),
            desired_version=int(versions["desired"]),
            sent_version=int(versions["sent"]),
            acked_version=int(versions["acked"]),
            state=SessionState(raw["state"]),
            created_at=float(raw.get("created_at", 0.0)),
            updated_at=float(raw.get("updated_at", 0.0)),
            ended_at=None if raw.get("ended_at") is None else float(raw["ended_at"]),
            end_cause=raw.get("end_cause"),
            upstream_id=raw.get("upstream_id"),
            registered_by=raw.get("registered_by"),
            bucket_id=raw.get("bucket_id"),
        )


def _config_in(raw: Mapping[str, Any]) -> Config:
    return {str(name): tuple(v) if isinstance(v, list) else v for name, v in raw.items()}

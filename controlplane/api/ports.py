"""What the REST API needs from the service. The API depends on this protocol only;
``controlplane.service.plane.ControlPlane`` implements it and app.py wires the two.

Every method returns JSON-ready values and raises ``controlplane.errors`` types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from controlplane.roles import Role, Team

__all__ = ["ControlPlaneAPI"]


class ControlPlaneAPI(Protocol):
    node_id: str
    draining: bool  # set when the service shuts down: event streams end

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, named checks) for /readyz."""
        ...

    # ``role``: the caller's token role, ``team`` its team; ownership and lock checks use them
    # (docs/policies.md#ownership, #locks, docs/security.md#teams)
    async def publish_policy(
        self, doc: Mapping[str, Any], *, actor: str, role: Role, team: Team | None = None
    ) -> dict[str, Any]:
        """Validate, version, publish; answers {"id", "version", "event_id", "warnings"} once
        stored.

        Raises ValidationFailed (details.violations), Forbidden (``policy_owned``) or Conflict
        (version regression/duplicate; ``field_locked``).
        """
        ...

    async def preview_policy(
        self, doc: Mapping[str, Any], *, role: Role, team: Team | None = None
    ) -> dict[str, Any]:
        """Which live sessions would change: {"id", "version", "targeted", "changed",
        "by_kind": {...}, "by_variant": {...}, "samples": [{"session_id", "delta", "wire"}],
        "warnings": [...]}; the same ownership and lock refusals as publishing."""
        ...

    async def retire_policy(
        self, policy_id: str, *, actor: str, role: Role, reason: str | None = None,
        team: Team | None = None,
    ) -> dict[str, Any]: ...  # fmt: skip

    async def rollback_policy(
        self,
        policy_id: str,
        to_version: int,
        *,
        actor: str,
        role: Role,
        reason: str | None = None,
        team: Team | None = None,
    ) -> dict[str, Any]: ...

    async def transfer_policy(
        self, policy_id: str, team: str, *, actor: str, role: Role, reason: str
    ) -> dict[str, Any]:
        """An admin hands the policy id to ``team`` (docs/security.md#transfers)."""
        ...

    async def wave_action(
        self, policy_id: str, action: str, *, actor: str, role: Role, team: Team | None = None
    ) -> dict[str, Any]:
        """``promote`` / ``pause`` / ``resume`` the current version's waves: {"id",
        "version", "waves"}; 409 when the version has no waves or the step cannot happen."""
        ...

    def list_policies(self, *, include_retired: bool = False) -> list[dict[str, Any]]: ...

    def get_policy(self, policy_id: str) -> dict[str, Any]: ...

    def policy_versions(
        self, policy_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Change records (oldest first) and the next page's cursor."""

    async def rollout_status(self, policy_id: str) -> dict[str, Any]:
        """{"id", "version", "versions": [{"version", "variant", "targeted", "sent", "acked",
        "unverified", "rejected", "pending"}], "totals": {...}}."""
        ...

    async def list_sessions(
        self,
        *,
        selector: Mapping[str, list[str]] | None = None,
        kind: str | None = None,
        state: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        upstream_id: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]: ...

    async def get_session(self, session_id: str) -> dict[str, Any]: ...

    async def relabel_session(
        self, session_id: str, labels: Mapping[str, str | None], *, actor: str
    ) -> dict[str, Any]:
        """Set (str) or remove (None) labels, re-resolve and push; answers the session."""
        ...

    async def session_log(self, session_id: str) -> list[dict[str, Any]]: ...

    async def experiment_assignments(self, key: str) -> list[dict[str, Any]]:
        """[{"session_id", "policy", "version", "variant", "bucket_by", "bucket_value",
        "kind", "model", "assigned_at", "state", "iteration", "first_assigned_at",
        "exposed_at", "left_at", "upstream_session_id", "labels"}] in (session id, iteration)
        order, over the experiment's whole history."""
        ...

    async def experiment_summary(self, key: str) -> dict[str, Any]:
        """{"experiment", "iteration", "variants": [...], "exposed", "srm": {...}}."""
        ...

    async def experiment_timeline(self, key: str) -> dict[str, Any]:
        """{"experiment", "iteration", "bin_s", "exposed", "binned", "variants", "bins"}:
        counted exposures over time (docs/experiments.md#exposures-over-time)."""
        ...

    async def verify_audit(
        self, session_id: str | None = None, *, public_keys: Sequence[str] = ()
    ) -> dict[str, Any]:
        """{"items": [{"session_id", "ok", "count", "first_bad_seq", "problem",
        "covered_seq"}], "ok", "checkpoints": {...}, "source"}; ``public_keys`` (base64 or
        PEM Ed25519) pin the checkpoint signers (docs/audit.md)."""
        ...

    async def config_at(
        self, session_id: str, at: float, *, public_keys: Sequence[str] = ()
    ) -> dict[str, Any]:
        """The configuration in effect at ``at`` (Unix seconds) rebuilt from the log, with its
        evidence (docs/audit.md). NotFound (unknown session, or before it), Conflict (a log
        without the connect config)."""
        ...

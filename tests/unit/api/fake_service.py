"""A fake ``ControlPlaneAPI`` we own, plus a helper to serve it with the real routes.

It keeps just enough state to answer every route with realistic shapes and records every
call, so tests can assert that a refused request reached nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from controlplane.api.ports import ControlPlaneAPI
from controlplane.api.routes import add_routes
from controlplane.config import Settings
from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.roles import Role, Team
from policies.errors import PolicyValidationError, Violation

__all__ = ["TOKENS", "FakeControlPlane", "serve_fake", "session", "settings_with_tokens"]

# role -> token; deliberately recognisable so a leak is easy to spot
TOKENS = {
    "viewer": "tok-viewer-SECRET-1111111111",
    "app": "tok-app-SECRET-5555555555555555",
    "experimenter": "tok-experimenter-SECRET-2222",
    "compliance": "tok-compliance-SECRET-333333",
    "admin": "tok-admin-SECRET-44444444444444",
}


def session(
    sid: str, kind: str = "streaming-v3", state: str = "synced", **labels: str
) -> dict[str, Any]:
    return {
        "id": sid,
        "kind": kind,
        "model": "u3-rt-pro" if kind == "streaming-v3" else "voice-agent",
        "labels": dict(labels),
        "state": state,
        "node": "node-a",
        "effective_config": {"prompt": "hello"},
        "versions": {"desired": 2, "sent": 2, "acked": None},
    }


class FakeControlPlane:
    """In-memory stand-in for controlplane.service.plane.ControlPlane (answers, records calls)."""

    node_id = "node-a"
    draining = False

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.ready = True
        self.raise_next: BaseException | None = None
        self.versions: dict[str, list[dict[str, Any]]] = {
            "eu-disclosure": [
                {"id": "eu-disclosure", "version": 1, "priority": 100, "set": {"prompt": "a"}},
                {"id": "eu-disclosure", "version": 2, "priority": 100, "set": {"prompt": "b"}},
            ]
        }
        self.retired: set[str] = set()
        self.sessions: dict[str, dict[str, Any]] = {
            s["id"]: s
            for s in (
                session("s-1", region="eu-west-1", tenant="acme"),
                session("s-2", region="eu-central-1", tenant="acme"),
                session("s-3", kind="voice-agent-v1", state="pending", region="us-east-1"),
                session("s-4", region="eu-west-1", tenant="globex", caller_id="+15550001"),
            )
        }
        self.broken_sessions: set[str] = set()

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        if self.raise_next is not None:
            exc, self.raise_next = self.raise_next, None
            raise exc

    def _latest(self, policy_id: str) -> dict[str, Any]:
        if policy_id not in self.versions:
            raise NotFound(f"no policy {policy_id!r}", details={"policy_id": policy_id})
        return self.versions[policy_id][-1]

    def _summary(self, policy_id: str) -> dict[str, Any]:
        doc = self._latest(policy_id)
        return {
            "id": policy_id,
            "version": doc["version"],
            "status": "retired" if policy_id in self.retired else "active",
            "cause": "publish",
            "actor": "compliance:abcdef",
            "published_at": 1_790_000_000.5,
            "event_id": f"{policy_id}:{doc['version']}",
            "policy": doc,
        }

    # -- ControlPlaneAPI -----------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.ready, {"bus": "ok" if self.ready else "down", "registry": "ok"}

    async def publish_policy(
        self, doc: Mapping[str, Any], *, actor: str, role: Role, team: Team | None = None
    ) -> dict[str, Any]:
        self._record("publish_policy", dict(doc), actor)
        policy_id = doc.get("id")
        violations = []
        if not isinstance(policy_id, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", policy_id):
            violations.append(Violation("id", "pattern", "must match [a-z0-9][a-z0-9-]*"))
        keyterms = (doc.get("set") or {}).get("keyterms") or []
        if len(keyterms) > 100:
            violations.append(
                Violation("set.keyterms", "max_items", f"has {len(keyterms)} items", 100)
            )
        if violations:
            raise PolicyValidationError(
                violations, policy_id if isinstance(policy_id, str) else None
            )
        assert isinstance(policy_id, str)
        history = self.versions.setdefault(policy_id, [])
        current = history[-1]["version"] if history else 0
        version = doc.get("version", current + 1)
        if version <= current:
            raise Conflict(
                f"policy {policy_id!r} version {version} does not exceed current {current}",
                details={"policy_id": policy_id, "current": current},
            )
        history.append({**doc, "version": version})
        self.retired.discard(policy_id)
        return {"id": policy_id, "version": version, "event_id": f"{policy_id}:{version}"}

    async def preview_policy(
        self, doc: Mapping[str, Any], *, role: Role, team: Team | None = None
    ) -> dict[str, Any]:
        self._record("preview_policy", dict(doc))
        return {
            "id": doc.get("id"),
            "version": 1,
            "targeted": 3,
            "changed": 2,
            "by_kind": {"streaming-v3": 2},
            "by_variant": {},
            "samples": [{"session_id": "s-1", "delta": {"prompt": "x"}, "wire": {}}],
        }

    async def retire_policy(
        self, policy_id: str, *, actor: str, role: Role, reason: str | None = None,
        team: Team | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        self._record("retire_policy", policy_id, actor, *([reason] if reason else []))
        latest = self._latest(policy_id)
        self.retired.add(policy_id)
        return {"id": policy_id, "version": latest["version"], "event_id": "retire-1"}

    async def wave_action(
        self, policy_id: str, action: str, *, actor: str, role: Role, team: Team | None = None
    ) -> dict[str, Any]:
        self._record("wave_action", policy_id, action, actor)
        return {"id": policy_id, "version": 1, "waves": None}

    async def transfer_policy(
        self, policy_id: str, team: str, *, actor: str, role: Role, reason: str
    ) -> dict[str, Any]:
        self._record("transfer_policy", policy_id, team, actor, reason)
        return {"id": policy_id, "version": 2, "owner_team": team}

    async def rollback_policy(
        self,
        policy_id: str,
        to_version: int,
        *,
        actor: str,
        role: Role,
        reason: str | None = None,
        team: Team | None = None,
    ) -> dict[str, Any]:
        self._record("rollback_policy", policy_id, to_version, actor, *([reason] if reason else []))
        history = self.versions.get(policy_id)
        if not history:
            raise NotFound(f"no policy {policy_id!r}")
        target = next((d for d in history if d["version"] == to_version), None)
        if target is None:
            raise NotFound(f"policy {policy_id!r} has no version {to_version}")
        new = {**target, "version": history[-1]["version"] + 1}
        history.append(new)
        return {
            "id": policy_id,
            "version": new["version"],
            "event_id": f"{policy_id}:{new['version']}",
        }

    def list_policies(self, *, include_retired: bool = False) -> list[dict[str, Any]]:
        self._record("list_policies", include_retired)
        return [
            self._summary(pid)
            for pid in sorted(self.versions)
            if include_retired or pid not in self.retired
        ]

    def get_policy(self, policy_id: str) -> dict[str, Any]:
        self._record("get_policy", policy_id)
        return self._summary(policy_id)

    def policy_versions(
        self, policy_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        self._record("policy_versions", policy_id)
        self._latest(policy_id)
        return [
            {"id": policy_id, "version": d["version"], "policy": d}
            for d in self.versions[policy_id]
        ], None

    async def rollout_status(self, policy_id: str) -> dict[str, Any]:
        self._record("rollout_status", policy_id)
        latest = self._latest(policy_id)
        row = {
            "version": latest["version"],
            "variant": None,
            "targeted": 3,
            "sent": 2,
            "acknowledged": 1,
            "unverified": 0,
            "rejected": 0,
            "pending": 1,
            "unchanged": 0,
            "guard_failures": 0,
        }
        totals = {k: v for k, v in row.items() if k not in ("version", "variant")}
        return {
            "id": policy_id,
            "version": latest["version"],
            "status": "active",
            "state": "active",
            "versions": [row],
            "totals": totals,
            "halt": None,
            "guard": {
                "enabled": True,
                "max_failure_ratio": 0.01,
                "min_sessions": 50,
                "window_s": 300.0,
                "on_breach": "halt",
            },
        }

    async def list_sessions(
        self,
        *,
        selector: Mapping[str, list[str]] | None = None,
        kind: str | None = None,
        state: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        upstream_id: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        self._record("list_sessions", selector, kind, state, limit, cursor)

        def keep(s: dict[str, Any]) -> bool:
            if upstream_id is not None and s.get("upstream_id") != upstream_id:
                return False
            if kind and s["kind"] != kind:
                return False
            if state and s["state"] != state:
                return False
            return all(s["labels"].get(k) in vs for k, vs in (selector or {}).items())

        matching = [s for s in sorted(self.sessions.values(), key=lambda s: s["id"]) if keep(s)]
        if cursor is not None and not cursor.isdigit():
            raise BadRequest("query parameter 'cursor' is not a cursor returned by this endpoint")
        start = int(cursor or 0)
        page = matching[start : start + limit]
        nxt = str(start + limit) if start + limit < len(matching) else None
        return page, nxt

    async def get_session(self, session_id: str) -> dict[str, Any]:
        self._record("get_session", session_id)
        if session_id not in self.sessions:
            raise NotFound(f"no live session {session_id!r}", details={"session_id": session_id})
        return self.sessions[session_id]

    async def relabel_session(
        self, session_id: str, labels: Mapping[str, str | None], *, actor: str
    ) -> dict[str, Any]:
        self._record("relabel_session", session_id, dict(labels), actor)
        current = await self.get_session(session_id)
        for key, value in labels.items():
            if value is None:
                current["labels"].pop(key, None)
            else:
                current["labels"][key] = value
        return current

    async def session_log(self, session_id: str) -> list[dict[str, Any]]:
        self._record("session_log", session_id)
        await self.get_session(session_id)
        return [
            {
                "seq": 1,
                "at": 1_790_000_000.0,
                "session_id": session_id,
                "version": 1,
                "cause": "connect",
                "policies": [],
                "delta": {},
                "wire": None,
                "status": "sent",
                "error": None,
                "config_hash": "c" * 64,
                "prev_hash": "0" * 64,
                "hash": "a" * 64,
            },
            {
                "seq": 2,
                "at": 1_790_000_001.0,
                "session_id": session_id,
                "version": 2,
                "cause": "policy",
                "policies": [{"id": "eu-disclosure", "version": 2, "variant": None}],
                "delta": {"prompt": "b"},
                "wire": {"type": "UpdateConfiguration", "prompt": "b"},
                "status": "sent",
                "error": None,
                "config_hash": "d" * 64,
                "prev_hash": "a" * 64,
                "hash": "b" * 64,
            },
        ]

    async def experiment_summary(self, key: str) -> dict[str, Any]:
        self._record("experiment_summary", key)
        if key != "upsell-q4":
            raise NotFound(f"no experiment {key!r}")
        srm = {"test": "chi-squared", "p_value": 0.5, "mismatch": False, "threshold": 0.001,
               "min_exposures": 100, "statistic": 0.45}  # fmt: skip
        variants = [
            {"name": "control", "weight": 50.0, "expected_share": 0.5, "exposed": 1,
             "exposed_share": 0.5, "expected_exposed": 1.0},
            {"name": "enterprise, pitch", "weight": 50.0, "expected_share": 0.5, "exposed": 1,
             "exposed_share": 0.5, "expected_exposed": 1.0},
        ]  # fmt: skip
        return {"experiment": key, "iteration": 1, "policy": "upsell", "version": 3,
                "digest": None, "bucket_by": "session_id", "exposed": 2, "variants": variants,
                "srm": srm}  # fmt: skip

    async def experiment_timeline(self, key: str) -> dict[str, Any]:
        self._record("experiment_timeline", key)
        if key != "upsell-q4":
            raise NotFound(f"no experiment {key!r}")
        variants = [{"name": "control", "exposed": 1, "binned": 1, "first": "2026-01-31T12:00:00Z",
                     "latest": "2026-01-31T12:01:00Z"}]  # fmt: skip
        bins = [{"at": "2026-01-31T12:00:00Z", "variant": "control", "exposed": 1,
                 "cumulative": 1}]  # fmt: skip
        return {
            "experiment": key,
            "iteration": 1,
            "policy": "upsell",
            "version": 3,
            "bin_s": 60,
            "exposed": 1,
            "binned": 1,
            "variants": variants,
            "bins": bins,
        }

    async def experiment_assignments(self, key: str) -> list[dict[str, Any]]:
        self._record("experiment_assignments", key)
        if key != "upsell-q4":
            raise NotFound(f"no experiment {key!r}")
        return [
            {
                "session_id": "s-1",
                "policy": "upsell",
                "version": 3,
                "variant": "control",
                "bucket_by": "session_id",
                "bucket_value": "s-1",
                "kind": "streaming-v3",
                "model": "u3-rt-pro",
                "assigned_at": 1_790_000_000.0,
                "state": "synced",
            },
            {
                "session_id": "s-4",
                "policy": "upsell",
                "version": 3,
                "variant": "enterprise, pitch",
                "bucket_by": "caller_id",
                "bucket_value": "+15550001",
                "kind": "streaming-v3",
                "model": "u3-rt-pro",
                "assigned_at": 1_790_000_002.5,
                "state": "synced",
                "weight": 50,
            },
        ]

    async def verify_audit(
        self, session_id: str | None = None, *, public_keys: Sequence[str] = ()
    ) -> dict[str, Any]:
        self._record("verify_audit", session_id)
        ids = sorted(self.sessions) if session_id is None else [session_id]
        items = [
            {
                "session_id": sid,
                "ok": sid not in self.broken_sessions,
                "count": 2,
                "first_bad_seq": 2 if sid in self.broken_sessions else None,
                "problem": "hash mismatch" if sid in self.broken_sessions else None,
            }
            for sid in ids
        ]
        checkpoints = {"ok": True, "count": 0, "trust": "trail", "trusted_keys": {},
                       "nodes": {}, "first_bad": None, "problems": []}  # fmt: skip
        ok = all(item["ok"] for item in items)
        return {"items": items, "ok": ok, "checkpoints": checkpoints, "source": "local"}

    async def config_at(
        self, session_id: str, at: float, *, public_keys: Sequence[str] = ()
    ) -> dict[str, Any]:
        self._record("config_at", session_id)
        await self.get_session(session_id)
        entry = {"seq": 1, "at": 1_790_000_000.0, "cause": "connect", "status": "sent",
                 "version": 1, "hash": "a" * 64, "config_hash": "c" * 64, "error": None,
                 "meaning": "connect parameters; sent, not acknowledged"}  # fmt: skip
        return {"session_id": session_id, "at": at, "config": {"prompt": "a"}, "policies": [],
                "established_by": entry, "verified": True}  # fmt: skip


def _typecheck(fake: FakeControlPlane) -> ControlPlaneAPI:
    return fake  # mypy/pyright: the fake satisfies the port


def settings_with_tokens(**overrides: Any) -> Settings:
    tokens = {token: role for role, token in TOKENS.items()}
    return Settings(tokens=tokens, node_id="node-a", **overrides)


async def serve_fake(
    fake: FakeControlPlane,
    settings: Settings | None = None,
    *,
    app: web.Application | None = None,
    **kwargs: Any,
) -> TestClient[web.Request, web.Application]:
    """A started TestClient over a real server with the API mounted; close it when done."""
    app = app or web.Application()
    add_routes(app, fake, settings or settings_with_tokens(), **kwargs)
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client

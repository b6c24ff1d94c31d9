"""Every route × {no token, bad token, viewer, app, experimenter, compliance, admin}.

Ownership and locks (which need the real policy store) are the second matrix, in
tests/integration/service/test_authority_matrix.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controlplane.api.auth import Role
from controlplane.api.routes import ROUTES, RouteSpec
from tests.unit.api.fake_service import TOKENS, FakeControlPlane, serve_fake

EXPERIMENT_DOC = {
    "id": "upsell",
    "experiment": {
        "key": "upsell-q4",
        "variants": [{"name": "control", "weight": 50, "set": {}}],
    },
}

# handler -> (path, JSON body or None); each must succeed for an allowed role
SAMPLES: dict[str, tuple[str, Any]] = {
    "list_sessions": ("/v1/sessions?selector=tenant=acme", None),
    "get_session": ("/v1/sessions/s-1", None),
    "relabel_session": ("/v1/sessions/s-1/labels", {"labels": {"tier": "gold"}}),
    "session_log": ("/v1/sessions/s-1/log", None),
    "config_at": ("/v1/sessions/s-1/config-at?at=2026-01-31T12:00:00Z", None),
    "publish_policy": ("/v1/policies", EXPERIMENT_DOC),
    "preview_policy": ("/v1/policies/preview", EXPERIMENT_DOC),  # as publish: its rules
    "list_policies": ("/v1/policies", None),
    "get_policy": ("/v1/policies/eu-disclosure", None),
    "retire_policy": ("/v1/policies/eu-disclosure", None),
    "policy_versions": ("/v1/policies/eu-disclosure/versions", None),
    "rollout_status": ("/v1/policies/eu-disclosure/rollout", None),
    "rollout_stream": ("/v1/policies/eu-disclosure/rollout/stream", None),
    "rollback_policy": ("/v1/policies/eu-disclosure/rollback", {"to": 1}),
    "transfer_policy": ("/v1/policies/eu-disclosure/transfer", {"team": "risk", "reason": "r"}),
    "promote_policy": ("/v1/policies/eu-disclosure/promote", None),
    "pause_policy": ("/v1/policies/eu-disclosure/pause", None),
    "resume_policy": ("/v1/policies/eu-disclosure/resume", None),
    "experiment_assignments": ("/v1/experiments/upsell-q4/assignments", None),
    "experiment_summary": ("/v1/experiments/upsell-q4", None),
    "experiment_timeline": ("/v1/experiments/upsell-q4/timeline", None),
    "verify_audit": ("/v1/audit/verify", None),
    "readyz": ("/readyz", None),
    "openapi": ("/openapi.json", None),
}

CALLERS = ("none", "bad", "viewer", "app", "experimenter", "compliance", "admin")


def test_every_route_has_a_sample() -> None:
    assert set(SAMPLES) == {spec.handler for spec in ROUTES}


def expected(spec: RouteSpec, caller: str) -> int:
    if spec.role is None:
        return 200
    if caller in ("none", "bad"):
        return 401
    if Role.parse(caller) < spec.role:
        return 403
    return 201 if spec.method == "POST" and spec.path == "/v1/policies" else 200


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("spec", ROUTES, ids=lambda s: f"{s.method} {s.path}")
async def test_role_matrix(spec: RouteSpec, caller: str) -> None:
    fake = FakeControlPlane()
    client = await serve_fake(fake)
    try:
        path, body = SAMPLES[spec.handler]
        headers = {}
        if caller == "bad":
            headers["Authorization"] = "Bearer not-a-configured-token"
        elif caller != "none":
            headers["Authorization"] = f"Bearer {TOKENS[caller]}"
        data = None if body is None else json.dumps(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        resp = await client.request(spec.method, path, data=data, headers=headers)
        if resp.status == 200 and spec.handler == "rollout_stream":  # endless: the first event
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert (await resp.content.readline()).startswith(b"event: rollout")
            resp.close()
            assert expected(spec, caller) == 200
            return
        payload = await resp.json()
        want = expected(spec, caller)
        assert resp.status == want, payload
        if want == 401:
            assert payload["error"]["code"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        if want == 403:
            assert payload["error"]["code"] == "forbidden"
            assert payload["error"]["details"]["required_role"] == spec.role.label  # type: ignore[union-attr]
            assert spec.role.label in payload["error"]["message"]  # type: ignore[union-attr]
        if want in (401, 403):
            assert fake.calls == []  # refused before reaching the service
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"id": "eu-disclosure", "set": {"prompt": "x"}}, "no 'experiment' block"),
        ({**EXPERIMENT_DOC, "lock": ["prompt"]}, "has a 'lock'"),
        ({**EXPERIMENT_DOC, "experiment": "upsell-q4"}, "no 'experiment' block"),
        ({**EXPERIMENT_DOC, "experiment": {}}, "no 'experiment' block"),
    ],
)
async def test_experimenter_may_publish_only_unlocked_experiments(
    doc: dict[str, Any], reason: str
) -> None:
    fake = FakeControlPlane()
    client = await serve_fake(fake)
    try:
        auth = {"Authorization": f"Bearer {TOKENS['experimenter']}"}
        resp = await client.post("/v1/policies", json=doc, headers=auth)
        payload = await resp.json()
        assert resp.status == 403, payload
        assert payload["error"]["code"] == "forbidden"
        assert reason in payload["error"]["message"]
        assert payload["error"]["details"]["required_role"] == "compliance"
        assert fake.calls == []
        # the same document is fine for compliance
        auth = {"Authorization": f"Bearer {TOKENS['compliance']}"}
        resp = await client.post("/v1/policies", json=doc, headers=auth)
        assert resp.status in (201, 422), await resp.text()
    finally:
        await client.close()


async def test_experimenter_publish_with_empty_lock_is_allowed_and_actor_is_hashed() -> None:
    fake = FakeControlPlane()
    client = await serve_fake(fake)
    try:
        auth = {"Authorization": f"Bearer {TOKENS['experimenter']}"}
        resp = await client.post("/v1/policies", json={**EXPERIMENT_DOC, "lock": []}, headers=auth)
        assert resp.status == 201
        body = await resp.json()
        assert body["id"] == "upsell"
        assert resp.headers["Location"] == "/v1/policies/upsell"
        (_, _, actor) = fake.calls[0]
        role, _, digest = actor.partition(":")
        assert role == "experimenter" and len(digest) == 6
        assert TOKENS["experimenter"] not in actor
    finally:
        await client.close()

"""The role × action matrix extended to ownership and locks (issue #18), on the real service.

tests/unit/api/test_auth_matrix.py checks every route's minimum role against a fake service;
these need the real policy store: who owns a policy id, and which locks are active.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.service.conftest import ControlPlaneUnderTest

ROLES = ("viewer", "app", "experimenter", "compliance", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES)}
OWNERS = ("experimenter", "compliance", "admin")
ACTIONS = ("publish", "preview", "rollback", "retire")


def token(role: str) -> str:
    return f"tok-{role}"


def experiment(pid: str, priority: int = 0, **doc: Any) -> dict[str, Any]:
    """A document every role from experimenter up may publish (an experiment, no lock)."""
    return {"id": pid, "priority": priority, **doc, "experiment": {"key": pid, "variants": [
        {"name": "a", "weight": 50, "set": {}},
        {"name": "b", "weight": 50, "set": {"prompt": f"{pid} b"}}]}}  # fmt: skip


async def act(cp: ControlPlaneUnderTest, action: str, pid: str, role: str) -> tuple[int, Any]:
    method, path, body = {
        "publish": ("POST", "/v1/policies", experiment(pid, priority=9)),
        "preview": ("POST", "/v1/policies/preview", experiment(pid, priority=9)),
        "rollback": ("POST", f"/v1/policies/{pid}/rollback", {"to": 1}),
        "retire": ("DELETE", f"/v1/policies/{pid}", None),
    }[action]
    headers = {"Authorization": f"Bearer {token(role)}"}
    async with cp.http.request(method, cp.base + path, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("caller", ROLES)
async def test_ownership_matrix(cp: ControlPlaneUnderTest, caller: str) -> None:
    """Below experimenter: the route refuses (forbidden). Below the owner: policy_owned.
    Otherwise the action succeeds, and a higher caller becomes the owner."""
    for owner in OWNERS:
        for action in ACTIONS:
            pid = f"{owner}-{action}"
            await cp.publish(experiment(pid), token=token(owner))
            await cp.publish(experiment(pid, priority=1), token=token(owner))
            status, body = await act(cp, action, pid, caller)
            cell = (caller, owner, action, status, body)
            policy = await cp.call("GET", f"/v1/policies/{pid}", expect=200)
            if RANK[caller] < RANK["experimenter"]:
                assert (status, body["error"]["code"]) == (403, "forbidden"), cell
                assert body["error"]["details"]["required_role"] == "experimenter", cell
            elif RANK[caller] < RANK[owner]:
                assert (status, body["error"]["code"]) == (403, "policy_owned"), cell
                assert body["error"]["details"]["owner_role"] == owner, cell
            else:
                assert status == (201 if action == "publish" else 200), cell
                if action != "preview":
                    assert policy["version"] == 3 and policy["role"] == caller, cell
                    assert policy["owner_role"] == caller, cell
                continue
            # refused: nothing changed
            assert policy["version"] == 2 and policy["owner_role"] == owner, cell
            assert policy["status"] == "active", cell


@pytest.mark.parametrize("lock_owner", ["compliance", "admin"])
@pytest.mark.parametrize("publisher", ["experimenter", "compliance", "admin"])
async def test_lock_matrix(cp: ControlPlaneUnderTest, lock_owner: str, publisher: str) -> None:
    """A publisher below the lock's owner: 409 where the lock surely covers the sessions,
    a warning where that depends on labels, nothing where the matches are disjoint. An equal
    or higher publisher is never refused or warned."""
    lock = {"id": "locked", "match": {"labels": {"region": "eu"}}, "set": {"prompt": "L"},
            "lock": ["prompt"]}  # fmt: skip
    await cp.publish(lock, token=token(lock_owner))
    lower = RANK[publisher] < RANK[lock_owner]
    for overlap, match in (
        ("certain", {}),
        ("certain", {"labels": {"region": "eu"}, "kind": ["voice-agent-v1"]}),
        ("labels", {"labels": {"tenant": "acme"}}),
        ("none", {"labels": {"region": "us"}}),
    ):
        pid = f"c-{len(match)}-{overlap}"
        for path in ("/v1/policies/preview", "/v1/policies"):
            doc = experiment(pid, priority=1_000_000, match=match)
            headers = {"Authorization": f"Bearer {token(publisher)}"}
            async with cp.http.post(cp.base + path, json=doc, headers=headers) as resp:
                status, body = resp.status, await resp.json()
            cell = (lock_owner, publisher, overlap, path, status, body)
            if lower and overlap == "certain":
                assert status == 409 and body["error"]["code"] == "field_locked", cell
                details = body["error"]["details"]
                assert (details["field"], details["policy"], details["version"]) == (
                    "prompt", "locked", 1), cell  # fmt: skip
                continue
            assert status == (201 if path == "/v1/policies" else 200), cell
            warned = [(w["field"], w["policy"]) for w in body["warnings"]]
            assert warned == ([("prompt", "locked")] if lower and overlap == "labels" else []), cell

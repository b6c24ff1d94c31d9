"""Ownership by team (docs/security.md#teams), through the real REST API: at a policy's owner
role, below admin, only its owner team (or a token granted that team) may publish, preview,
retire, roll back or step its waves; another team gets 403 ``policy_owned`` naming the owner
team and the role it would need. A refusal changes nothing; an accepted change records its
actor and team in the history."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from controlplane.config import Settings
from controlplane.intake.bus import PolicyEvent, rfc3339
from tests.integration.service.conftest import ControlPlaneUnderTest, serving

TOKENS = {
    "tok-growth-a": "experimenter@growth",
    "tok-growth-b": "experimenter@growth",
    "tok-search": "experimenter@search",
    "tok-lead": "experimenter@search+growth",  # granted team growth
    "tok-solo-1": "experimenter",  # no team: team "default"
    "tok-solo-2": "experimenter",
    "tok-legal": "compliance@legal",
    "tok-risk": "compliance@risk",
    "tok-admin": "admin",
}


@pytest.fixture
async def cp(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    async with serving(cp_settings(tokens=TOKENS)) as cp:
        yield cp


def experiment(policy_id: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"id": policy_id, "match": {"labels": {"tenant": policy_id}},
            "experiment": {"key": policy_id, "variants": [
                {"name": "a", "weight": 50, "set": {"system_prompt": f"{prompt} A"}},
                {"name": "b", "weight": 50, "set": {"system_prompt": f"{prompt} B"}}]},
            **extra}  # fmt: skip


async def versions(cp: ControlPlaneUnderTest, policy_id: str) -> list[dict[str, Any]]:
    body = await cp.call("GET", f"/v1/policies/{policy_id}/versions", expect=200)
    return list(body["items"])


async def refused(
    cp: ControlPlaneUnderTest, method: str, path: str, token: str, body: Any = None
) -> dict[str, Any]:
    answer = await cp.call(method, path, token=token, body=body, expect=403)
    error = dict(answer["error"])
    assert error["code"] == "policy_owned", error
    return error


async def test_another_team_may_not_change_an_experiment_and_a_refusal_changes_nothing(
    cp: ControlPlaneUnderTest,
) -> None:
    await cp.publish(experiment("exp", "v1"), token="tok-growth-a")
    await cp.publish(experiment("exp", "v2"), token="tok-growth-a")
    before = await versions(cp, "exp")
    assert [(v["team"], v["owner_team"], v["owner_role"]) for v in before] == [
        ("growth", "growth", "experimenter")] * 2  # fmt: skip

    attempts = [
        ("POST", "/v1/policies", experiment("exp", "theirs")),
        ("POST", "/v1/policies/preview", experiment("exp", "theirs")),
        ("DELETE", "/v1/policies/exp", None),
        ("POST", "/v1/policies/exp/rollback", {"to": 1}),
        ("POST", "/v1/policies/exp/pause", None),
    ]
    for method, path, body in attempts:
        error = await refused(cp, method, path, "tok-search", body)
        expected = {
            "id": "exp",
            "owner_role": "experimenter",
            "owner_team": "growth",
            "role": "experimenter",
            "team": "search",
            "required_role": "compliance",
        }
        assert error["details"] == expected, path
        assert "team 'growth'" in error["message"] and "compliance" in error["message"], path
    assert await versions(cp, "exp") == before  # nothing changed
    assert (await cp.call("GET", "/v1/policies/exp", expect=200))["status"] == "active"


async def test_the_owner_team_a_granted_token_and_a_higher_role_may_and_are_recorded(
    cp: ControlPlaneUnderTest,
) -> None:
    await cp.publish(experiment("exp", "v1"), token="tok-growth-a")
    # another token of the same team
    await cp.publish(experiment("exp", "v2"), token="tok-growth-b")
    # a token of team search granted team growth acts for growth
    await cp.call("POST", "/v1/policies/exp/rollback", token="tok-lead",
                  body={"to": 1}, expect=200)  # fmt: skip
    history = await versions(cp, "exp")
    assert [(v["version"], v["team"], v["owner_team"]) for v in history] == [
        (1, "growth", "growth"),
        (2, "growth", "growth"),
        (3, "growth", "growth"),
    ]
    actors = [v["actor"] for v in history]
    assert actors[0] != actors[1] != actors[2] and all(
        a.startswith("experimenter:") for a in actors)  # fmt: skip
    # a higher role of any team takes it over: its team owns it from then on
    await cp.call("DELETE", "/v1/policies/exp", token="tok-legal", expect=200)
    last = (await versions(cp, "exp"))[-1]
    assert (last["action"], last["role"], last["owner_role"], last["owner_team"]) == (
        "retire",
        "compliance",
        "compliance",
        "legal",
    )
    assert last["actor"].startswith("compliance:")
    error = await refused(cp, "POST", "/v1/policies", "tok-growth-a", experiment("exp", "v4"))
    assert error["details"]["owner_role"] == "compliance"  # below the owner role now


async def test_tokens_without_a_team_share_the_default_team(cp: ControlPlaneUnderTest) -> None:
    """Existing configurations keep working: team-less tokens (and rotating one) manage what
    they own together, as before teams; a named team cannot touch it, nor they a team's."""
    await cp.publish(experiment("solo", "v1"), token="tok-solo-1")
    (first,) = await versions(cp, "solo")
    assert (first["team"], first["owner_team"]) == ("default", "default")
    await cp.publish(experiment("solo", "v2"), token="tok-solo-2")
    error = await refused(cp, "DELETE", "/v1/policies/solo", "tok-growth-a")
    assert (error["details"]["owner_team"], error["details"]["team"]) == ("default", "growth")
    await cp.publish(experiment("exp", "v1"), token="tok-growth-a")
    error = await refused(cp, "DELETE", "/v1/policies/exp", "tok-solo-1")
    assert (error["details"]["owner_team"], error["details"]["team"]) == ("growth", "default")
    await cp.call("DELETE", "/v1/policies/solo", token="tok-solo-1", expect=200)


async def test_a_lock_policy_of_one_compliance_team_needs_admin_from_another(
    cp: ControlPlaneUnderTest,
) -> None:
    lock = {"id": "disclosure", "match": {}, "set": {"system_prompt": "Say you are an AI."},
            "lock": ["system_prompt"]}  # fmt: skip
    await cp.publish(lock, token="tok-legal")
    for method, path, body in (
        ("POST", "/v1/policies", {**lock, "lock": []}),
        ("DELETE", "/v1/policies/disclosure", None),
    ):
        error = await refused(cp, method, path, "tok-risk", body)
        assert (error["details"]["owner_team"], error["details"]["required_role"]) == (
            "legal",
            "admin",
        )
    assert len(await versions(cp, "disclosure")) == 1
    await cp.publish({**lock, "set": {"system_prompt": "Say you are a bot."}}, token="tok-legal")
    await cp.call("DELETE", "/v1/policies/disclosure", token="tok-admin", expect=200)


async def test_the_owner_team_holds_after_a_restart(cp_settings: Callable[..., Settings]) -> None:
    """The embedded store rebuilds the owner team from its stored events' ``team``."""
    settings = cp_settings(tokens=TOKENS)
    for run in range(2):
        async with serving(settings) as cp:
            if run == 0:
                await cp.publish(experiment("exp", "v1"), token="tok-growth-a")
                continue
            policy = await cp.call("GET", "/v1/policies/exp", expect=200)
            assert (policy["owner_team"], policy["owner_role"]) == ("growth", "experimenter")
            error = await refused(cp, "DELETE", "/v1/policies/exp", "tok-search")
            assert error["details"]["owner_team"] == "growth"
            await cp.call("DELETE", "/v1/policies/exp", token="tok-growth-b", expect=200)


async def test_another_team_may_not_run_an_experiment_key_of_another_team(
    cp: ControlPlaneUnderTest,
) -> None:
    """Exposures, the summary (and its SRM) and the export are per experiment key: a policy of
    team search running team growth's key would count search's sessions into growth's
    experiment. Refused on every path (REST publish and preview, a policy event on the bus);
    the owner team, a token granted it and a higher role may."""
    await cp.publish(experiment("checkout", "v1"), token="tok-growth-a")
    variants = [{"name": "a", "weight": 100, "set": {"system_prompt": "X"}}]
    theirs = experiment("evil", "x", match={"labels": {"tenant": "evil"}},
                        experiment={"key": "checkout", "variants": variants})  # fmt: skip
    for path in ("/v1/policies", "/v1/policies/preview"):
        error = await refused(cp, "POST", path, "tok-search", theirs)
        assert error["details"] == {
            "id": "checkout", "experiment": "checkout", "owner_role": "experimenter",
            "owner_team": "growth", "role": "experimenter", "team": "search",
            "required_role": "compliance",
        }, path  # fmt: skip
        assert "another experiment key" in error["message"]
    event = PolicyEvent("policy.published", {**theirs, "version": 1}, "experimenter:0a0b0c",
                        rfc3339(time.time()), role="experimenter", team="search")  # fmt: skip
    await cp.service.bus.publish(event)
    await asyncio.sleep(0.2)
    await cp.call("GET", "/v1/policies/evil", expect=404)
    # a key of its own is fine; the owner team, a granted token, a higher role may share it
    await cp.publish({**theirs, "experiment": {**theirs["experiment"], "key": "search-own"}},
                     token="tok-search")  # fmt: skip
    await cp.publish({**theirs, "id": "growth-2"}, token="tok-growth-b")
    await cp.publish({**theirs, "id": "lead-2"}, token="tok-lead")
    await cp.publish({**theirs, "id": "legal-2"}, token="tok-legal")

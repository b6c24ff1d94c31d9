"""Transfers (docs/security.md#transfers): the first team to lock a field held it, and a team's
experiment key stayed with its policies (retired ones too), with no way to hand either over
but an admin taking the policy over (its owner role rising to admin). Now an admin, and only
an admin, hands a policy id to another team: explicit (``POST /v1/policies/{id}/transfer``
naming the team and a reason), recorded as a version (action ``transfer``, the admin's actor,
the new team) and logged, the owner role kept; every replica's store refuses a transfer event
that is not an admin's or that changes anything but the owner team. Real REST, real store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from controlplane import cli
from controlplane.config import Settings
from controlplane.edges.client import ControlClient
from controlplane.intake.bus import PolicyEvent, rfc3339
from tests.integration.distributed.conftest import Cluster, cluster  # noqa: F401
from tests.integration.service.conftest import ControlPlaneUnderTest, eventually, serving

TOKENS = {
    "tok-legal": "compliance@legal",
    "tok-risk": "compliance@risk",
    "tok-growth": "experimenter@growth",
    "tok-search": "experimenter@search",
    "tok-admin": "admin",
}
STREAMING = {"kind": ["streaming-v3"]}
LOCK = {"id": "legal-turns", "match": STREAMING, "set": {"max_turn_silence_ms": 2500},
        "lock": ["max_turn_silence_ms"]}  # fmt: skip
RISK = {"id": "risk-turns", "match": STREAMING, "set": {"max_turn_silence_ms": 900}}


def experiment(policy_id: str, key: str) -> dict[str, Any]:
    return {"id": policy_id, "match": {"labels": {"tenant": policy_id}},
            "experiment": {"key": key, "variants": [
                {"name": "a", "weight": 50, "set": {"system_prompt": "A"}},
                {"name": "b", "weight": 50, "set": {"system_prompt": "B"}}]}}  # fmt: skip


@pytest.fixture
async def cp(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    async with serving(cp_settings(tokens=TOKENS)) as cp:
        yield cp


async def history(cp: ControlPlaneUnderTest, policy_id: str) -> list[dict[str, Any]]:
    body = await cp.call("GET", f"/v1/policies/{policy_id}/versions", token="tok-admin")
    return list(body["items"])


async def transfer(
    cp: ControlPlaneUnderTest, policy_id: str, body: Any, *, token: str = "tok-admin",
    expect: int = 200,
) -> dict[str, Any]:  # fmt: skip
    path = f"/v1/policies/{policy_id}/transfer"
    return dict(await cp.call("POST", path, token=token, body=body, expect=expect))


async def test_only_an_admin_hands_a_lock_to_another_team_recorded_and_the_role_kept(
    cp: ControlPlaneUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    await cp.publish(LOCK, token="tok-legal")
    await cp.call("POST", "/v1/policies", token="tok-risk", body=RISK, expect=409)
    # below admin, the owner team included: refused, nothing changes
    for token in ("tok-legal", "tok-risk", "tok-growth"):
        body = await transfer(cp, "legal-turns", {"team": "risk", "reason": "reorg"},
                              token=token, expect=403)  # fmt: skip
        assert body["error"]["details"]["required_role"] == "admin"
    # an admin must say to whom and why; a team by the team-name rule; a real change
    await transfer(cp, "legal-turns", {"team": "risk"}, expect=400)
    await transfer(cp, "legal-turns", {"team": "risk", "reason": " "}, expect=400)
    await transfer(cp, "legal-turns", {"team": "\u217cegal", "reason": "r"}, expect=400)
    await transfer(cp, "legal-turns", {"team": "risk", "reason": "r", "x": 1}, expect=400)
    body = await transfer(cp, "legal-turns", {"team": "LEGAL", "reason": "r"}, expect=409)
    assert body["error"]["code"] == "already_owned"
    await transfer(cp, "nope", {"team": "risk", "reason": "r"}, expect=404)
    assert len(await history(cp, "legal-turns")) == 1

    live = ControlClient(cp.ws_base + "/v1/control", token="tok-admin", kind="streaming-v3",
                         model="universal-3-5-pro", labels={"tenant": "acme"})  # fmt: skip
    async with live:
        with caplog.at_level(logging.WARNING, logger="controlplane.service.publishing"):
            done = await transfer(cp, "legal-turns", {"team": "Risk", "reason": "risk owns it"})

        async def recorded() -> dict[str, Any] | None:  # the live session: same value, v2
            entry = (await cp.log(live.session_id))[-1]
            return dict(entry) if entry["policies"][0]["version"] == 2 else None

        entry = await eventually(recorded)
        assert (entry["cause"], entry["status"], entry["delta"]) == ("policy", "unchanged", {})
        view = await cp.session(live.session_id)
        assert view["effective_config"] == {"max_turn_silence_ms": 2500}
    assert (done["version"], done["owner_team"], done["owner_role"]) == (2, "risk", "compliance")
    assert done["previous_owner_team"] == "legal"
    said = [r.getMessage() for r in caplog.records if "transferred" in r.getMessage()]
    assert len(said) == 1 and "from team 'legal' to team 'risk'" in said[0], said
    assert "tok-admin" not in said[0] and "admin:" in said[0]
    first, last = await history(cp, "legal-turns")
    assert (last["action"], last["cause"], last["role"], last["team"], last["owner_team"],
            last["owner_role"], last["reason"]) == (
        "transfer", "transfer", "admin", "risk", "risk", "compliance", "risk owns it")  # fmt: skip
    assert last["actor"].startswith("admin:") and last["status"] == "active"
    assert {k: v for k, v in last["policy"].items() if k not in ("version", "reason")} == {
        k: v for k, v in first["policy"].items() if k not in ("version", "reason")}  # fmt: skip
    # the lock is risk's now: risk may set the field and change the policy; legal may not
    await cp.call("POST", "/v1/policies", token="tok-risk", body=RISK, expect=201)
    await cp.publish({**LOCK, "set": {"max_turn_silence_ms": 2000}}, token="tok-risk")
    body = await cp.call("POST", "/v1/policies", token="tok-legal", expect=403,
                         body={**LOCK, "set": {"max_turn_silence_ms": 100}})  # fmt: skip
    assert body["error"]["details"]["owner_team"] == "risk"
    await cp.call("POST", "/v1/policies", token="tok-legal", expect=409,
                  body={**RISK, "id": "legal-other"})  # fmt: skip


async def test_a_retired_policy_keeps_its_key_until_an_admin_transfers_it_and_it_stays_retired(
    cp_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = cp_settings(tokens=TOKENS)
    mine = experiment("search-checkout", "checkout")
    async with serving(settings) as cp:
        await cp.publish(experiment("checkout", "checkout"), token="tok-growth")
        await cp.call("DELETE", "/v1/policies/checkout", token="tok-growth", expect=200)
        # retired, it still holds the key (its exposures stay under it)
        error = await cp.call("POST", "/v1/policies", token="tok-search", body=mine, expect=403)
        assert error["error"]["details"]["id"] == "checkout"
        capsys.readouterr()
        argv = ["policy", "transfer", "checkout", "--url", cp.base, "--token", "tok-admin",
                "--team", "search", "--reason", "search reruns it"]  # fmt: skip
        assert await asyncio.to_thread(cli.main, argv) == 0
        assert "from team growth to team search" in capsys.readouterr().out
        assert (await history(cp, "checkout"))[-1]["status"] == "retired"
    async with serving(settings) as cp:  # replayed from the stored events
        policy = await cp.call("GET", "/v1/policies/checkout", token="tok-admin", expect=200)
        assert (policy["status"], policy["owner_team"]) == ("retired", "search")
        listed = await cp.call("GET", "/v1/policies", token="tok-admin", expect=200)
        assert "checkout" not in [p["id"] for p in listed["items"]]
        await cp.call("POST", "/v1/policies", token="tok-search", body=mine, expect=201)
        await cp.call("POST", "/v1/policies", token="tok-growth", expect=403,
                      body=experiment("growth-again", "checkout"))  # fmt: skip


async def test_a_policy_mid_waves_or_owned_by_admin_is_not_transferred(
    cp: ControlPlaneUnderTest,
) -> None:
    waves = {**RISK, "rollout": {"waves": [25, 50, 100], "wave_interval_s": 3600}}
    await cp.publish(waves, token="tok-risk")
    await cp.publish({**waves, "set": {"max_turn_silence_ms": 800}}, token="tok-risk")
    body = await transfer(cp, "risk-turns", {"team": "legal", "reason": "r"}, expect=409)
    assert body["error"]["code"] == "rollout_in_progress"
    await cp.publish({**RISK, "id": "admins"}, token="tok-admin")
    body = await transfer(cp, "admins", {"team": "legal", "reason": "r"}, expect=409)
    assert body["error"]["code"] == "not_transferable"
    assert [len(await history(cp, p)) for p in ("risk-turns", "admins")] == [2, 1]


async def test_every_store_refuses_a_transfer_event_not_an_admins_or_changing_the_document(
    cp: ControlPlaneUnderTest,
) -> None:
    """A policy event with cause ``transfer`` (another replica, a tool): applied only from
    an admin, to another team, carrying the current document unchanged."""
    await cp.publish(LOCK, token="tok-legal")
    now = rfc3339(time.time())

    def event(version: int, role: str, team: str | None, doc: dict[str, Any]) -> PolicyEvent:
        return PolicyEvent("policy.published", {**doc, "version": version}, f"{role}:0a0b0c",
                           now, cause="transfer", role=role, team=team)  # fmt: skip

    refused = [
        event(2, "compliance", "risk", LOCK),  # the owner role, not admin
        event(2, "admin", None, LOCK),  # to no team
        event(2, "admin", "legal", LOCK),  # to its owner team
        event(2, "admin", "risk", {**LOCK, "set": {"max_turn_silence_ms": 100}}),  # a new document
        event(2, "admin", "risk", {**LOCK, "lock": []}),  # the lock dropped
    ]
    for bad in refused:
        await cp.service.bus.publish(bad)
    retired = PolicyEvent("policy.retired", {**LOCK, "version": 2}, "admin:0a0b0c", now,
                          cause="transfer", role="admin", team="risk")  # fmt: skip
    await cp.service.bus.publish(retired)  # an active policy stays active
    await asyncio.sleep(0.2)
    assert len(await history(cp, "legal-turns")) == 1
    await cp.service.bus.publish(event(2, "admin", "risk", LOCK))
    await asyncio.sleep(0.2)
    last = (await history(cp, "legal-turns"))[-1]
    assert (last["version"], last["owner_team"], last["owner_role"]) == (2, "risk", "compliance")


async def test_a_transfer_on_one_replica_is_every_replicas(cluster: Cluster) -> None:  # noqa: F811
    a = await cluster.start("node-a", tokens=TOKENS)
    b = await cluster.start("node-b", tokens=TOKENS)
    await a.call("POST", "/v1/policies", token="tok-legal", body=LOCK, expect=201)
    await transfer(a, "legal-turns", {"team": "risk", "reason": "reorg"})

    async def moved() -> bool:
        body = await b.call("GET", "/v1/policies/legal-turns", token="tok-admin")
        return body.get("owner_team") == "risk"

    assert await eventually(moved)
    await b.call("POST", "/v1/policies", token="tok-risk", expect=201,
                 body={**LOCK, "set": {"max_turn_silence_ms": 2000}})  # fmt: skip
    await b.call("POST", "/v1/policies", token="tok-legal", body=RISK, expect=409)


async def test_a_takeover_by_a_higher_role_is_announced_never_silent(
    cp: ControlPlaneUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    """A higher role's publish (or rollback, or retirement) takes a policy over: the answer
    names the owner before and after, and the replica logs it with the actor."""
    await cp.publish(LOCK, token="tok-legal")
    same = await cp.publish({**LOCK, "set": {"max_turn_silence_ms": 2400}}, token="tok-legal")
    assert "previous_owner_role" not in same  # the owner stayed: nothing to announce
    with caplog.at_level(logging.WARNING, logger="controlplane.service.publishing"):
        taken = await cp.publish({**LOCK, "set": {"max_turn_silence_ms": 2300}})  # admin
    assert (taken["owner_role"], taken["owner_team"]) == ("admin", "default")
    assert (taken["previous_owner_role"], taken["previous_owner_team"]) == ("compliance", "legal")
    said = [r.getMessage() for r in caplog.records if "taken over" in r.getMessage()]
    assert len(said) == 1 and "was role compliance team 'legal'" in said[0], said
    await cp.publish(experiment("exp", "k"), token="tok-growth")
    retired = await cp.call("DELETE", "/v1/policies/exp", token="tok-legal", expect=200)
    assert retired["previous_owner_role"] == "experimenter" and retired["owner_team"] == "legal"

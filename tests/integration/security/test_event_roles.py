"""Policy events from a role below the policy's owner change nothing, whatever their type
(docs/security.md, docs/policies.md#ownership): a ``policy.halted`` event naming an
experimenter (or a viewer) cannot halt a compliance policy's version, on the real service
and its bus, and nothing of it reaches the embedded policy files; nor does one at the
owner's role for another team (docs/security.md#teams). The rollout guard's own
halts (no role: they act for the owner) and a halt by the owner's role and team still apply.
"""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.intake.bus import PolicyEvent, rfc3339
from tests.integration.service.conftest import ControlPlaneUnderTest
from tests.integration.service.test_authority import _app, _prompt

COMPLIANCE = "tok-compliance"
PROMPT = "This call is recorded for compliance."
DISCLOSURE = {
    "id": "eu-disclosure", "match": {"labels": {"region": "eu-west-1"}},
    "set": {"prompt": PROMPT}, "lock": ["prompt"],
}  # fmt: skip


def _halt(
    doc: dict[str, Any], role: str | None, actor: str, team: str | None = None
) -> PolicyEvent:
    return PolicyEvent(
        "policy.halted", doc, actor, rfc3339(0), cause="guard", role=role,
        halt={"reason": "forged", "on_breach": "halt"}, team=team,
    )  # fmt: skip


async def _halt_files(cp: ControlPlaneUnderTest) -> list[str]:
    return sorted(p.name for p in (cp.data_dir / "policies").rglob("*halt*"))


@pytest.mark.parametrize("role", ["experimenter", "app", "viewer"])
async def test_a_halt_event_from_a_role_below_the_owner_changes_nothing(
    cp: ControlPlaneUnderTest, role: str
) -> None:
    await cp.publish({**DISCLOSURE, "set": {"prompt": "v1"}}, token=COMPLIANCE)
    await cp.publish(DISCLOSURE, token=COMPLIANCE)
    store = cp.service.store
    doc = store.latest("eu-disclosure").policy.document()
    files_before = await _halt_files(cp)
    # with a role, and with only the actor's role prefix (events before the role field); the
    # owner's role for another team than the owner's ("default": its token names none)
    for event in (_halt(doc, role, f"{role}:1a2b3c"), _halt(doc, None, f"{role}:1a2b3c"),
                  _halt(doc, "compliance", "compliance:1a2b3c", team="another-team")):  # fmt: skip
        await cp.service.bus.publish(event)
        assert store.halted("eu-disclosure") is None
        rollout = await cp.call("GET", "/v1/policies/eu-disclosure/rollout", expect=200)
        assert rollout["state"] == "active"
        assert await _halt_files(cp) == files_before
    # a new session still runs the current version, not the fallback a halt would give it
    async with _app(cp, region="eu-west-1") as app:
        assert app.session_id is not None
        assert await _prompt(cp, app.session_id) == PROMPT


@pytest.mark.parametrize(("role", "actor"), [(None, "guard:node-1"), ("compliance", "ops:1")])
async def test_a_halt_event_from_the_guard_or_the_owner_role_applies(
    cp: ControlPlaneUnderTest, role: str | None, actor: str
) -> None:
    await cp.publish({**DISCLOSURE, "set": {"prompt": "v1"}}, token=COMPLIANCE)
    await cp.publish(DISCLOSURE, token=COMPLIANCE)
    doc = cp.service.store.latest("eu-disclosure").policy.document()
    team = None if role is None else cp.service.store.owner_team("eu-disclosure")
    await cp.service.bus.publish(_halt(doc, role, actor, team))
    rollout = await cp.call("GET", "/v1/policies/eu-disclosure/rollout", expect=200)
    assert rollout["state"] == "halted"
    assert await _halt_files(cp) == ["2.halted.json"]  # stored before it applied
    async with _app(cp, region="eu-west-1") as app:  # a late joiner gets the fallback
        assert app.session_id is not None
        assert await _prompt(cp, app.session_id) == "v1"


@pytest.mark.parametrize(("role", "applies"), [("experimenter", False), ("compliance", True)])
async def test_a_wave_step_from_a_role_below_the_owner_changes_nothing(
    cp: ControlPlaneUnderTest, role: str, applies: bool
) -> None:
    waves = {**DISCLOSURE, "rollout": {"waves": [25, 50, 100], "wave_interval_s": 3600.0}}
    await cp.publish(waves, token=COMPLIANCE)
    doc = cp.service.store.latest("eu-disclosure").policy.document()
    step = PolicyEvent("policy.wave", doc, f"{role}:1a2b3c", rfc3339(0), cause="wave",
                       role=role, wave={"seq": 1, "action": "promote", "index": 1},
                       team=cp.service.store.owner_team("eu-disclosure"))  # fmt: skip
    await cp.service.bus.publish(step)
    rollout = await cp.call("GET", "/v1/policies/eu-disclosure/rollout", expect=200)
    assert rollout["waves"]["index"] == (1 if applies else 0), rollout["waves"]
    assert len(rollout["waves"]["steps"]) == (1 if applies else 0)

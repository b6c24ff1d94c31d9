"""One team-name rule wherever a team enters (docs/security.md#team-names): ASCII letters,
digits, '.', '_', '-', read in lower case. ``Legal`` and ``legal`` are one team in the token
configuration, in grants, in policy events (in-process and on the NATS stream) and in data
stored before the rule (embedded policy files, the registry's ``registered_by``); a team
spelt with a space or a look-alike letter is refused (never a second, near-identical team
that could slip past a team-bound lock or an experiment key)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from controlplane.config import Settings
from controlplane.config.schema import parse_tokens
from controlplane.edges.client import ControlClient
from controlplane.intake.bus import PolicyEvent, UndecodableEvent, decode_event, rfc3339
from sessions.model import SessionState
from tests.integration.distributed.conftest import Cluster, cluster  # noqa: F401
from tests.integration.service.conftest import ControlPlaneUnderTest, eventually, serving

TOKENS = {
    "tok-legal": "compliance@legal",
    "tok-LEGAL": "compliance@LEGAL",
    "tok-risk-granted": "compliance@risk+Legal",
    "tok-risk": "compliance@risk",
    "tok-alpha": "app@alpha",
    "tok-admin": "admin",
}
STREAMING = {"kind": ["streaming-v3"]}
LOCK = {"id": "legal-turns", "match": STREAMING, "set": {"max_turn_silence_ms": 2500},
        "lock": ["max_turn_silence_ms"]}  # fmt: skip
LOOK_ALIKES = ["legal ", " legal", "\u217cegal", "le\u0261al", "legal\u200b", "le gal", "l" * 64]


@pytest.fixture
async def cp(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    async with serving(cp_settings(tokens=TOKENS)) as cp:
        yield cp


async def latest(cp: ControlPlaneUnderTest, policy_id: str) -> dict[str, Any]:
    versions = await cp.call("GET", f"/v1/policies/{policy_id}/versions", expect=200)
    return dict(versions["items"][-1])


async def test_a_team_is_one_name_whatever_its_case_in_the_configuration(
    cp: ControlPlaneUnderTest,
) -> None:
    """``compliance@LEGAL`` and ``compliance@legal`` act for one team (``legal``), and so does
    a grant of ``Legal``: each may change the other's lock policy, recorded for ``legal``."""
    await cp.publish(LOCK, token="tok-LEGAL")
    policy = await cp.call("GET", "/v1/policies/legal-turns", token="tok-admin", expect=200)
    assert policy["owner_team"] == "legal"
    await cp.publish({**LOCK, "set": {"max_turn_silence_ms": 2400}}, token="tok-legal")
    await cp.publish({**LOCK, "set": {"max_turn_silence_ms": 2300}}, token="tok-risk-granted")
    mine = await latest(cp, "legal-turns")
    assert (mine["version"], mine["team"], mine["owner_team"]) == (3, "legal", "legal")
    # another team still may not (the rule did not widen anything)
    body = await cp.call("POST", "/v1/policies", token="tok-risk", expect=403,
                         body={**LOCK, "set": {"max_turn_silence_ms": 100}})  # fmt: skip
    assert body["error"]["details"]["owner_team"] == "legal"


@pytest.mark.parametrize("team", [t for t in LOOK_ALIKES if t == t.strip()])
def test_a_configured_team_with_a_space_or_a_look_alike_letter_is_refused(team: str) -> None:
    """Not a second team: the entry is refused, naming the rule, never the token (spaces
    around a name are the configuration's own whitespace, stripped like around a role)."""
    with pytest.raises(ValueError) as refused:
        parse_tokens(f"compliance@risk+{team}:secret-token-value")
    assert "ASCII letters" in str(refused.value) and "secret-token-value" not in str(refused.value)


def _wire(team: str, policy_id: str = "legal-turns", version: int = 2) -> bytes:
    doc = {**LOCK, "id": policy_id, "version": version, "set": {"max_turn_silence_ms": 100}}
    event = PolicyEvent("policy.published", doc, "compliance:0a0b0c", rfc3339(time.time()),
                        role="compliance")  # fmt: skip
    return json.dumps({**event.to_json(), "team": team}).encode()


def test_a_policy_event_spells_its_team_one_way() -> None:
    assert decode_event(_wire("LEGAL")).team == "legal"
    assert decode_event(_wire("Risk.Ops_1")).team == "risk.ops_1"
    for team in [*LOOK_ALIKES, "", "-legal"]:
        with pytest.raises(UndecodableEvent, match="ASCII letters"):
            decode_event(_wire(team))
    # built in-process (the guard, waves, a publish): the same rule
    assert PolicyEvent("policy.retired", LOCK, "a", "t", team="Legal").team == "legal"
    with pytest.raises(ValueError, match="ASCII letters"):
        PolicyEvent("policy.retired", LOCK, "a", "t", team="legal ")


async def test_on_the_policy_stream_a_look_alike_team_is_never_applied_and_case_is_one_team(
    cluster: Cluster,  # noqa: F811
) -> None:
    """A replica applies ``LEGAL``'s event as team ``legal``'s (the owner), and refuses one
    naming a look-alike team (undecodable: counted invalid, never applied)."""
    replica = await cluster.start("node-a", tokens=TOKENS)
    await replica.call("POST", "/v1/policies", token="tok-legal", body=LOCK, expect=201)
    for i, team in enumerate(LOOK_ALIKES):
        await cluster.publish_raw("legal-turns", _wire(team, "near-turns", i + 1),
                                  msg_id=f"near-turns:{i + 1}")  # fmt: skip
    await cluster.publish_raw("legal-turns", _wire("LEGAL"), msg_id="legal-turns:2")

    async def applied() -> bool:
        body = await replica.call("GET", "/v1/policies/legal-turns")
        return body.get("version") == 2

    assert await eventually(applied)
    body = await replica.call("GET", "/v1/policies/legal-turns/versions", token="tok-admin")
    versions = body["items"]
    assert (versions[-1]["team"], versions[-1]["owner_team"]) == ("legal", "legal")
    await replica.call("GET", "/v1/policies/near-turns", expect=404)


async def test_data_stored_before_the_rule_reads_in_the_canonical_spelling(
    cp_settings: Callable[..., Settings],
) -> None:
    """Upgrade: an embedded policy file and a registry record written while ``Legal`` and
    ``Alpha`` were spelt so: the owner team is ``legal`` (its tokens may change it, another
    team still may not) and app ``alpha`` continues its own session id."""
    settings = cp_settings(tokens=TOKENS)
    stored = settings.data_dir / "policies" / "old-lock" / "1.json"
    stored.parent.mkdir(parents=True)
    old = PolicyEvent(
        "policy.published",
        {**LOCK, "id": "old-lock", "version": 1},
        "compliance:0a0b0c",
        rfc3339(time.time()),
        role="compliance",
    ).to_json()
    stored.write_text(json.dumps({**old, "team": "Legal"}))
    async with serving(settings) as cp:
        policy = await cp.call("GET", "/v1/policies/old-lock", token="tok-admin", expect=200)
        assert policy["owner_team"] == "legal"
        await cp.publish({**LOCK, "id": "old-lock", "set": {"max_turn_silence_ms": 2200}},
                         token="tok-legal")  # fmt: skip
        await cp.call("DELETE", "/v1/policies/old-lock", token="tok-risk", expect=403)

        def client() -> ControlClient:
            return ControlClient(cp.ws_base + "/v1/control", token="tok-alpha",
                                 kind="voice-agent-v1", model="voice-agent",
                                 session_id="call-old", labels={"tenant": "acme"})  # fmt: skip

        async with client():
            pass
        registry = cp.service.registry

        async def ended() -> bool:
            return (await registry.get("call-old")).ended_at is not None

        assert await eventually(ended)
        record = await registry.get("call-old")
        assert record.registered_by == "alpha"
        record.registered_by = "Alpha"  # as a release before the rule recorded app@Alpha
        record.state, record.ended_at, record.end_cause = SessionState.SYNCED, None, None
        await registry.register(record)
        await registry.end("call-old", cause="client_closed", at=time.time())
        async with client() as again:
            assert again.session_id == "call-old"

"""Role-scoped policy signing keys (docs/distributed.md#signed-policy-events): a key written
``experimenter:KEY`` signs only events whose publisher role is experimenter or below, on a
real NATS. Such a key can ship an experiment from a pipeline, but an event it signs that claims
a higher role, or no role, is refused (``result="role_above_key"``), and what it may sign
still obeys the experimenter's rules on every replica's store: no ``lock``, no non-experiment
policy, nothing owned by compliance (published, halted). It never signs an owner request.
Unscoped keys (the replicas') keep full authority. A key scoped to teams too
(``experimenter@growth:KEY``) signs only events acting for one of them.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from controlplane.config import Settings, SettingsError
from controlplane.signing import SIGNATURE_HEADER, SigningKeys, signature
from tests.integration.distributed.conftest import Cluster, cluster, event  # noqa: F401
from tests.integration.distributed.harness import publish_signed
from tests.integration.service.conftest import eventually

REPLICA = "replica-" + secrets.token_hex(16)
EXP = "pipeline-" + secrets.token_hex(16)
DISCLOSURE = {"id": "eu-disclosure", "set": {"system_prompt": "recorded"},
              "lock": ["system_prompt"]}  # fmt: skip
UPSELL = {"id": "upsell", "version": 1, "experiment": {"key": "upsell", "variants": [
    {"name": "pitch", "weight": 100, "set": {"prompt": "Hi!"}}]}}  # fmt: skip


def _body(policy: dict[str, Any], role: str | None, kind: str = "policy.published",
          **extra: Any) -> bytes:  # fmt: skip
    raw = {**event(policy, kind), "actor": f"{role or 'ops-tool'}:pipeline", **extra}
    if role is not None:
        raw["role"] = role
    return json.dumps(raw).encode()


async def test_a_key_scoped_to_experimenter_signs_experiments_and_nothing_above(
    cluster: Cluster,  # noqa: F811
    caplog: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    a = await cluster.start("node-a", policy_signing_key=SigningKeys.parse(
        f"{REPLICA},experimenter:{EXP}"))  # fmt: skip
    await a.publish(DISCLOSURE, token="tok-compliance")  # signed by the replica's key
    # the pipeline's experiment, signed with the scoped key: applied
    await publish_signed(cluster, "upsell", _body(UPSELL, "experimenter"), msg_id="upsell:1",
                         key=EXP)  # fmt: skip

    async def upsell_applied() -> bool:
        body = await a.call("GET", "/v1/policies/upsell")
        return isinstance(body, dict) and body.get("owner_role") == "experimenter"

    await eventually(upsell_applied)

    forged = [  # (subject, body, msg id): each refused or ignored, none applied
        ("fake", _body({"id": "fake", "version": 1, "set": {"system_prompt": "x"}}, "compliance"),
         "fake:1"),  # claims compliance: above the key
        ("anon", _body({"id": "anon", "version": 1, "set": {"system_prompt": "x"}}, None),
         "anon:1"),  # no role (an operator's tool): only an unscoped key may sign that
        ("sneaky", _body({"id": "sneaky", "version": 1, "set": {"system_prompt": "x"}},
                         "experimenter"), "sneaky:1"),  # not an experiment
        ("locked", _body({**UPSELL, "id": "locked", "lock": ["prompt"]}, "experimenter"),
         "locked:1"),  # an experiment with a lock
        ("eu-disclosure", _body({**DISCLOSURE, "version": 2, "set": {"system_prompt": "gone"}},
                                "experimenter"), "eu-disclosure:2"),  # owned by compliance
        ("eu-disclosure", _body({**DISCLOSURE, "version": 1}, "experimenter", "policy.halted",
                                halt={"reason": "forged"}), "eu-disclosure:1:halted"),
    ]  # fmt: skip
    for subject, body, msg_id in forged:
        await publish_signed(cluster, subject, body, msg_id=msg_id, key=EXP)
    # a later good event shows the consumer went past every forged one
    await publish_signed(cluster, "upsell", _body({**UPSELL, "version": 2}, "experimenter"),
                         msg_id="upsell:2", key=EXP)  # fmt: skip

    async def upsell_v2() -> bool:
        return bool((await a.call("GET", "/v1/policies/upsell"))["version"] == 2)

    await eventually(upsell_v2)
    for pid in ("fake", "anon", "sneaky", "locked"):
        await a.call("GET", f"/v1/policies/{pid}", expect=404)
    disclosure = await a.call("GET", "/v1/policies/eu-disclosure", expect=200)
    assert disclosure["version"] == 1
    assert (await a.call("GET", "/v1/policies/eu-disclosure/rollout"))["state"] == "active"
    assert await a.metric("controlplane_policy_events_total", result="role_above_key") == 2
    assert await a.metric("controlplane_policy_events_total", result="ignored") == 4

    # the scoped key does not sign owner requests (replicas' business)
    nc = await cluster.nats()
    try:
        subject = f"{cluster.subject_prefix}.node.node-a.log"
        data = json.dumps({"session_id": "x", "sent_at": time.time()}).encode()
        reply = await nc.request(
            subject,
            data,
            timeout=5,
            headers={SIGNATURE_HEADER: signature(EXP.encode(), subject, data)},
        )
    finally:
        await nc.close()
    assert json.loads(reply.data)["error"]["status"] == 403
    assert "scoped" in caplog.text
    for secret in (REPLICA, EXP):
        assert secret not in caplog.text


async def test_a_key_scoped_to_a_team_signs_only_what_acts_for_that_team(
    cluster: Cluster,  # noqa: F811
) -> None:
    # (a team is one name whatever its case, in the key's scope and in the event: test_team_names)
    a = await cluster.start("node-a", policy_signing_key=SigningKeys.parse(
        f"{REPLICA},experimenter@Growth:{EXP}"))  # fmt: skip
    for policy_id, team in (("theirs", "search"), ("nobody", None), ("ours-too", "GROWTH"),
                            ("ours", "growth")):  # fmt: skip
        extra = {} if team is None else {"team": team}
        body = _body({**UPSELL, "id": policy_id}, "experimenter", **extra)
        await publish_signed(cluster, policy_id, body, msg_id=f"{policy_id}:1", key=EXP)

    async def ours_applied() -> bool:
        body = await a.call("GET", "/v1/policies/ours")
        return isinstance(body, dict) and body.get("owner_team") == "growth"

    await eventually(ours_applied)  # published after the two refused ones
    assert (await a.call("GET", "/v1/policies/ours-too"))["owner_team"] == "growth"
    for policy_id in ("theirs", "nobody"):
        await a.call("GET", f"/v1/policies/{policy_id}", expect=404)
    assert await a.metric("controlplane_policy_events_total", result="role_above_key") == 2


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        (f"experimenter:{EXP},{REPLICA}", "key 1 is scoped"),
        (f"{REPLICA},root:{EXP}", "key 2 is scoped to an unknown role"),
        # a misspelt scope was an UNSCOPED (replica, any role) key: now refused at start
        (f"{REPLICA},Experimenter:{EXP}", "key 2 is scoped to an unknown role"),
        (f"{REPLICA},experimenter@a b:{EXP}", "key 2: a team name"),
        (f"{REPLICA},experimenter@x+:{EXP}", "key 2: a team name"),
    ],
    ids=lambda v: v.replace(EXP, "EXP").replace(REPLICA, "REPLICA"),  # the same in every process
)
def test_a_scoped_first_key_or_an_unknown_scope_is_refused_at_start(
    keys: str, problem: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError) as refused:  # (as for any bad key: named, never quoted)
        Settings.from_env({"CONTROLPLANE_POLICY_SIGNING_KEY": keys})
    assert problem in str(refused.value)
    assert EXP not in str(refused.value) and REPLICA not in str(refused.value)
    path = tmp_path / "keys"
    path.write_text(keys.replace(",", "\n"))
    with pytest.raises(SettingsError) as refused_file:
        Settings(policy_signing_key_file=path).check()
    assert problem in str(refused_file.value) and EXP not in str(refused_file.value)

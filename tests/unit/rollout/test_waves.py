"""Progressive waves (issue 21, docs/policies.md#waves): the document rules, nested wave
membership, the store's wave steps and per-session sets, the event contract and the embedded
durable store's replay."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from controlplane.intake.bus import PolicyEvent, decode_event
from controlplane.intake.files import DurableIntake, PolicyFiles
from controlplane.intake.store import PolicyStore
from policies.bucketing import bucket
from policies.errors import PolicyValidationError
from policies.model import parse_policy

WAVES = [1, 10, 50, 100]


def published(version: int, prompt: str, **rollout: Any) -> PolicyEvent:
    doc: dict[str, Any] = {"id": "p", "version": version, "set": {"system_prompt": prompt}}
    if rollout:
        doc["rollout"] = rollout
    return PolicyEvent("policy.published", doc, "admin:abc", "2026-01-01T00:00:00Z",
                       role="admin")  # fmt: skip


def wave(version: int, seq: int, action: str, index: int, at: str = "2026-01-01T00:01:00Z",
         role: str = "admin") -> PolicyEvent:  # fmt: skip
    return PolicyEvent("policy.wave", {"id": "p", "version": version}, f"{role}:abc", at,
                       cause="wave", role=role,
                       wave={"seq": seq, "action": action, "index": index})  # fmt: skip


def prompt_for(store: PolicyStore, session_id: str) -> Any:
    (policy,) = [p for p in store.for_session(session_id, {}) if p.id == "p"] or [None]
    return None if policy is None else policy.set.get("system_prompt")


@pytest.mark.parametrize(
    ("rollout", "field", "rule"),
    [
        ({"waves": [10, 5, 100]}, "rollout.waves", "ascending"),
        ({"waves": [10, 10, 100]}, "rollout.waves", "ascending"),
        ({"waves": [1, 50]}, "rollout.waves", "last_wave"),
        ({"waves": [0, 100]}, "rollout.waves", "first_wave"),
        ({"waves": [*range(1, 21), 100]}, "rollout.waves", "max_items"),
        ({"waves": []}, "rollout.waves", "min_items"),
        ({"percent": 5, "waves": [100]}, "rollout", "percent_or_waves"),
        ({"percent": 5, "wave_interval_s": 3.0}, "rollout", "waves_required"),
        ({"waves": [100], "wave_interval_s": 0.01}, "rollout.wave_interval_s", "min"),
        ({"waves": None}, "rollout", "type"),
    ],
)
def test_bad_waves_are_refused_naming_field_and_rule(rollout: Any, field: str, rule: str) -> None:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy({"id": "p", "rollout": rollout})
    assert [(v.field, v.rule) for v in caught.value.violations] == [(field, rule)]


def test_waves_round_trip_and_default_interval() -> None:
    policy = parse_policy({"id": "p", "rollout": {"waves": [0.5, 10, 100]}})
    assert policy.document()["rollout"] == {"waves": [0.5, 10, 100], "wave_interval_s": 60.0,
                                            "bucket_by": "session_id"}  # fmt: skip
    assert parse_policy(policy.document()) == policy
    assert policy.plan.rollout_units is None  # waves gate versions, not the policy


def test_wave_membership_is_sticky_and_nested() -> None:
    store = PolicyStore()
    store.apply(published(1, "v1"))
    store.apply(published(2, "v2", waves=WAVES, wave_interval_s=1.0))
    ids = [f"s-{i}" for i in range(2000)]
    members: list[set[str]] = []
    for index, percent in enumerate(WAVES):
        if index:
            assert store.wave(wave(2, index, "advance", index)) is not None
        got = {s for s in ids if prompt_for(store, s) == "v2"}
        # exactly the sessions whose rollout bucket is under the wave's percent
        assert got == {s for s in ids if bucket("p", "rollout", s) < percent / 100}
        assert {s for s in ids if prompt_for(store, s) == "v1"} == set(ids) - got
        members.append(got)
    for earlier, later in itertools.pairwise(members):
        assert earlier < later  # nested: a session in wave k stays in wave k+1
    assert len(members[0]) < 60 and len(members[-1]) == 2000
    assert not store.has_waves  # the last wave: everybody, no per-session sets any more


def test_a_new_policy_with_waves_reaches_nobody_outside_its_wave() -> None:
    store = PolicyStore()
    store.apply(published(1, "v1", waves=[50, 100]))
    inside = next(s for s in (f"s-{i}" for i in range(100)) if bucket("p", "rollout", s) < 0.5)
    outside = next(s for s in (f"s-{i}" for i in range(100)) if bucket("p", "rollout", s) >= 0.5)
    assert prompt_for(store, inside) == "v1" and prompt_for(store, outside) is None


def test_wave_steps_apply_once_in_order_and_only_when_possible() -> None:
    store = PolicyStore()
    store.apply(published(1, "v1"))
    store.apply(published(2, "v2", waves=[10, 50, 100]))
    assert store.wave(wave(2, 2, "advance", 1)) is None  # not the next seq
    assert store.wave(wave(1, 1, "advance", 1)) is None  # not the active version
    assert store.wave(wave(2, 1, "advance", 2)) is None  # skips a wave
    assert store.wave(wave(2, 1, "resume", 0)) is None  # not paused
    assert store.wave(wave(2, 1, "pause", 0, role="experimenter")) is None  # below the owner
    state = store.wave(wave(2, 1, "pause", 0))
    assert state is not None and state.paused and state.seq == 1
    assert store.wave(wave(2, 1, "pause", 0)) is None  # a duplicate
    assert store.wave(wave(2, 2, "promote", 1, at="2026-01-01T00:05:00Z")) is not None
    assert state.index == 1 and state.paused and state.started_at == 1767225900.0
    assert store.wave(wave(2, 3, "resume", 1)) is not None and not state.paused
    assert store.wave(wave(2, 4, "advance", 2)) is not None and state.complete
    assert store.wave(wave(2, 5, "advance", 3)) is None  # past the last wave
    assert [s["action"] for s in state.steps] == ["pause", "promote", "resume", "advance"]
    assert [s["percent"] for s in state.steps] == [10, 50, 50, 100]


def test_a_halted_version_with_waves_takes_no_step() -> None:
    store = PolicyStore()
    store.apply(published(1, "v1"))
    store.apply(published(2, "v2", waves=[10, 100]))
    halt = PolicyEvent("policy.halted", {"id": "p", "version": 2}, "guard:n", "t",
                       cause="guard", halt={})  # fmt: skip
    assert store.halt(halt) is not None
    assert store.wave(wave(2, 1, "advance", 1)) is None
    assert all(prompt_for(store, f"s-{i}") == "v1" for i in range(50))


def test_the_wave_event_contract() -> None:
    event = wave(2, 3, "promote", 1)
    assert event.msg_id == "p:2:wave:3"
    back = decode_event(json.dumps(event.to_json()).encode())
    assert back == event and back.cause == "wave"
    for bad in ({"seq": -1, "action": "advance", "index": 1}, {"seq": 1, "action": "jump",
                "index": 1}, None):  # fmt: skip
        raw = {**event.to_json(), "wave": bad}
        with pytest.raises(ValueError, match="wave"):
            PolicyEvent.from_json(raw)
    with pytest.raises(ValueError, match=r"only for policy\.wave"):
        PolicyEvent.from_json({**published(1, "v").to_json(), "wave": {"seq": 1}})


async def test_wave_steps_persist_in_the_embedded_store_and_replay(tmp_path: Path) -> None:
    files = PolicyFiles(tmp_path / "policies")
    intake = DurableIntake(PolicyStore(), files)
    await intake.apply(published(1, "v1"))
    await intake.apply(published(2, "v2", waves=[10, 50, 100]))
    for step in (wave(2, 1, "advance", 1), wave(2, 2, "pause", 1), wave(2, 2, "pause", 1)):
        await intake.before_wave(step)  # the duplicate is not written
        intake.store.wave(step)
    assert sorted(p.name for p in (tmp_path / "policies" / "p").iterdir()) == [
        "1.json", "2.json", "2.wave-1.json", "2.wave-2.json",
    ]  # fmt: skip
    again = DurableIntake(PolicyStore(), PolicyFiles(tmp_path / "policies"))
    await again.replay()
    state = again.store.waves("p")
    assert state is not None and (state.index, state.paused, state.seq) == (1, True, 2)

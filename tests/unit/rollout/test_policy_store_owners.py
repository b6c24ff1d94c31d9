"""Policy ownership in the store (issue #18): the owner role comes from the events' ``role``,
only rises, and an event from a lower role changes nothing on any replica."""

from __future__ import annotations

from controlplane.intake.bus import PolicyEvent
from controlplane.intake.store import PolicyStore
from controlplane.roles import Role

AT = "2026-01-01T00:00:00Z"


def event(version: int, role: str | None, actor: str = "x:abc", **doc: object) -> PolicyEvent:
    body: dict[str, object] = {"id": "p", "version": version, "set": {"prompt": f"v{version}"}}
    if "experimenter" in (role, actor.partition(":")[0]):  # what an experimenter may publish
        body["experiment"] = {"key": "p", "variants": [{"name": "a", "weight": 100, "set": {}}]}
    return PolicyEvent("policy.published", {**body, **doc}, actor, AT, role=role)


def test_the_creator_owns_the_policy_and_a_higher_role_takes_it_over() -> None:
    store = PolicyStore()
    assert store.owner_role("p") is None
    store.apply(event(1, "experimenter"))
    assert store.owner_role("p") is Role.EXPERIMENTER
    assert store.active()[0].rank == Role.EXPERIMENTER
    store.apply(event(2, "compliance", lock=["prompt"]))
    assert store.owner_role("p") is Role.COMPLIANCE
    assert store.active()[0].rank == Role.COMPLIANCE


def test_an_event_from_a_role_below_the_owner_changes_nothing() -> None:
    store = PolicyStore()
    store.apply(event(1, "compliance", lock=["prompt"]))
    assert store.apply(event(2, "experimenter")) is None
    assert store.current_version("p") == 1
    assert store.active()[0].lock == ("prompt",)


def test_events_without_a_role_use_the_actor_prefix_else_keep_the_owner() -> None:
    store = PolicyStore()
    store.apply(event(1, None, actor="experimenter:1a2b3c"))  # published before `role`
    assert store.owner_role("p") is Role.EXPERIMENTER
    store.apply(event(2, None, actor="ops-tool"))  # an operator's tool on the stream
    assert store.owner_role("p") is Role.EXPERIMENTER
    assert store.latest("p").role is Role.EXPERIMENTER
    store.apply(event(3, "admin"))
    assert store.apply(event(4, None, actor="ops-tool")) is not None  # trusted, not refused
    assert store.owner_role("p") is Role.ADMIN
    fresh = PolicyStore()
    fresh.apply(event(1, None, actor="ops-tool"))
    assert fresh.owner_role("p") is Role.COMPLIANCE


def test_an_event_its_role_may_not_publish_changes_nothing() -> None:
    store = PolicyStore()
    plain = PolicyEvent("policy.published", {"id": "p", "version": 1, "set": {"prompt": "x"}},
                        "experimenter:abc", AT, role="experimenter")  # fmt: skip
    assert store.apply(plain) is None  # not an experiment
    assert store.apply(event(1, "experimenter", lock=["prompt"])) is None  # a lock
    assert store.owner_role("p") is None
    assert store.apply(event(1, "experimenter")) is not None


def test_the_role_round_trips_on_the_wire() -> None:
    wire = event(1, "admin").to_json()
    assert wire["role"] == "admin"
    assert PolicyEvent.from_json(wire).role == "admin"
    assert "role" not in PolicyEvent("policy.published", {"id": "p", "version": 1}, "a",
                                     AT).to_json()  # fmt: skip

"""Ownership by team in the store (docs/security.md#teams): every replica derives a policy's
owner team from its events' ``team``; at the owner role below admin an event for another team,
or for none, changes nothing (publish, retire, halt, wave step)."""

from __future__ import annotations

from typing import Any

from controlplane.intake.bus import PolicyEvent
from controlplane.intake.store import PolicyStore
from controlplane.roles import Role, Team, owner_refusal, parse_grant

AT = "2026-01-01T00:00:00Z"


def doc(version: int, **extra: Any) -> dict[str, Any]:
    return {"id": "p", "version": version, "set": {"prompt": f"v{version}"},
            "experiment": {"key": "p", "variants": [{"name": "a", "weight": 100, "set": {}}]},
            **extra}  # fmt: skip


def event(
    version: int, role: str | None, team: str | None, kind: str = "policy.published", **extra: Any
) -> PolicyEvent:
    cause = "retire" if kind == "policy.retired" else "policy"
    return PolicyEvent(kind, doc(version, **extra), f"{role}:abc", AT,  # type: ignore[arg-type]
                       cause=cause, role=role, team=team)  # fmt: skip


def test_the_creating_team_owns_the_policy_and_another_team_changes_nothing() -> None:
    store = PolicyStore()
    store.apply(event(1, "experimenter", "growth"))
    assert store.owner_team("p") == "growth"
    assert store.apply(event(2, "experimenter", "search")) is None  # another team
    assert store.apply(event(2, "experimenter", None)) is None  # no team: "default"
    assert store.apply(event(2, "experimenter", "growth", "policy.retired")) is not None
    assert store.latest("p").as_dict()["owner_team"] == "growth"


def test_a_higher_role_takes_the_team_over_and_admin_is_never_refused() -> None:
    store = PolicyStore()
    store.apply(event(1, "experimenter", "growth"))
    store.apply(event(2, "compliance", "legal", lock=["prompt"]))
    assert (store.owner_role("p"), store.owner_team("p")) == (Role.COMPLIANCE, "legal")
    assert store.apply(event(3, "compliance", "risk")) is None
    assert store.apply(event(3, "admin", "ops")) is not None
    assert store.apply(event(4, "admin", "other")) is not None  # admin: any team
    assert store.owner_team("p") == "ops"


def test_events_without_a_team_act_for_the_default_team_and_operators_keep_it() -> None:
    store = PolicyStore()
    store.apply(event(1, "experimenter", None))  # a token without a team, or before teams
    assert store.owner_team("p") == "default"
    assert store.apply(event(2, "experimenter", "default")) is not None  # the same team
    assert store.apply(event(3, "experimenter", "growth")) is None  # no adoption by a team
    store.apply(event(3, None, None))  # an operator's tool: trusted, keeps the owner
    assert store.owner_team("p") == "default"
    fresh = PolicyStore()
    fresh.apply(event(1, None, None))
    assert (fresh.owner_role("p"), fresh.owner_team("p")) == (Role.COMPLIANCE, "default")


def test_a_halt_or_wave_step_for_another_team_changes_nothing() -> None:
    store = PolicyStore()
    store.apply(event(1, "experimenter", "growth", rollout={"waves": [10, 100],
                                                             "wave_interval_s": 60}))  # fmt: skip
    halt = {"reason": "failure_ratio"}
    step = {"seq": 1, "action": "pause", "index": 0, "paused": False}
    other = PolicyEvent("policy.halted", doc(1), "experimenter:abc", AT, cause="guard",
                        halt=halt, role="experimenter", team="search")  # fmt: skip
    assert not store.halt_accepts(other)
    wave = PolicyEvent("policy.wave", doc(1), "experimenter:abc", AT, cause="wave",
                       role="experimenter", team="search", wave=step)  # fmt: skip
    assert store.wave(wave) is None
    owner_wave = PolicyEvent("policy.wave", doc(1), "experimenter:abc", AT, cause="wave",
                             role="experimenter", team="growth", wave=step)  # fmt: skip
    assert store.wave(owner_wave) is not None
    guard = PolicyEvent("policy.halted", doc(1), "guard:node-a", AT, cause="guard", halt=halt)
    assert store.halt(guard) is not None  # the guard (no role) acts for the owner


def test_the_team_round_trips_on_the_wire_and_grants_parse() -> None:
    wire = event(1, "experimenter", "growth").to_json()
    assert wire["team"] == "growth"
    assert PolicyEvent.from_json(wire).team == "growth"
    assert "team" not in event(1, "admin", None).to_json()
    assert parse_grant("experimenter@search+growth") == (Role.EXPERIMENTER, ("search", "growth"))
    assert parse_grant("app") == (Role.APP, ())
    for bad in ("experimenter@", "experimenter@a b", "experimenter@x:y", "nobody@growth"):
        try:
            parse_grant(bad)
        except ValueError as exc:
            assert bad not in str(exc)  # never quoted (a reversed entry: it is the token)
        else:
            raise AssertionError(bad)
    lead = Team("search", frozenset({"growth"}))
    assert (lead.acting_for("growth"), lead.acting_for("legal"), lead.acting_for(None)) == (
        "growth",
        "search",
        "search",
    )
    assert owner_refusal(Role.EXPERIMENTER, "search", Role.EXPERIMENTER, "growth") is not None
    assert owner_refusal(Role.COMPLIANCE, "search", Role.EXPERIMENTER, "growth") is None

"""Policy documents: validation errors (field, rule, limit), YAML/JSON loading, canonical form."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from policies.errors import PolicyValidationError, Violation
from policies.model import Policy, load_policy_text, parse_policy

DESIGN_EXAMPLE_YAML = """
id: eu-disclosure            # [a-z0-9][a-z0-9-]*
version: 4
priority: 100
match:
  kind: [streaming-v3, voice-agent-v1]
  model: [universal-3-5-pro, u3-rt-pro]
  labels: {region: [eu-west-1, eu-central-1], tenant: acme}
set: {prompt: "Say the disclosure.", keyterms: ["AssemblyAI"], max_turn_silence_ms: 2500}
lock: [prompt]
rollout: {percent: 25}
experiment:
  key: upsell-q4
  bucket_by: session_id
  variants:
    - {name: control, weight: 50, set: {}}
    - {name: enterprise-pitch, weight: 50, set: {system_prompt: "Pitch enterprise."}}
"""


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": "p1", "version": 1}
    doc.update(changes)
    return doc


def _experiment(*weights: Any, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    names = names or tuple(f"v{i}" for i in range(len(weights)))
    variants = [{"name": n, "weight": w} for n, w in zip(names, weights, strict=True)]
    return {"key": "exp", "variants": variants}


def _violations(doc: Any) -> list[Violation]:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy(doc)
    return caught.value.violations


# (case id, document, expected field, expected rule, expected limit)
INVALID: list[tuple[str, Any, str, str, Any]] = [
    ("unknown top-level field", _doc(prio=1), "prio", "unknown_field", None),
    (
        "unknown nested field",
        _doc(rollout={"percent": 5, "pct": 5}),
        "rollout.pct",
        "unknown_field",
        None,
    ),
    ("id missing", {"version": 1}, "id", "required", None),
    ("id uppercase", _doc(id="EU"), "id", "pattern", "^[a-z0-9][a-z0-9-]*$"),
    ("id leading hyphen", _doc(id="-eu"), "id", "pattern", "^[a-z0-9][a-z0-9-]*$"),
    ("id underscore", _doc(id="eu_west"), "id", "pattern", "^[a-z0-9][a-z0-9-]*$"),
    ("id too long", _doc(id="a" * 64), "id", "max_length", 63),
    ("version zero", _doc(version=0), "version", "min", 1),
    ("version string", _doc(version="4"), "version", "type", None),
    ("version bool", _doc(version=True), "version", "type", None),
    ("priority too high", _doc(priority=1_000_001), "priority", "max", 1_000_000),
    ("priority too low", _doc(priority=-1_000_001), "priority", "min", -1_000_000),
    ("priority float", _doc(priority=1.5), "priority", "type", None),
    (
        "weights sum 90",
        _doc(experiment=_experiment(50, 40)),
        "experiment.variants",
        "weights_sum",
        100,
    ),
    (
        "weights sum 100.001",
        _doc(experiment=_experiment("50.001", 50)),
        "experiment.variants",
        "weights_sum",
        100,
    ),
    (
        "weight over 100",
        _doc(experiment=_experiment(50, 150)),
        "experiment.variants[1].weight",
        "max",
        100,
    ),
    (
        "weight negative",
        _doc(experiment=_experiment(-10, 110)),
        "experiment.variants[0].weight",
        "min",
        0,
    ),
    (
        "weight 4 decimals",
        _doc(experiment=_experiment("49.9995", "50.0005")),
        "experiment.variants[0].weight",
        "max_decimals",
        3,
    ),
    (
        "variant names repeat",
        _doc(experiment=_experiment(50, 50, names=("a", "a"))),
        "experiment.variants",
        "unique",
        None,
    ),
    (
        "no variants",
        _doc(experiment={"key": "exp", "variants": []}),
        "experiment.variants",
        "min_items",
        1,
    ),
    (
        "experiment key pattern",
        _doc(experiment={**_experiment(100), "key": "Up Sell"}),
        "experiment.key",
        "pattern",
        "^[a-z0-9][a-z0-9-]*$",
    ),
    (
        "rollout percent 4 decimals",
        _doc(rollout={"percent": 12.3456}),
        "rollout.percent",
        "max_decimals",
        3,
    ),
    ("rollout percent over 100", _doc(rollout={"percent": 100.5}), "rollout.percent", "max", 100),
    ("rollout percent missing", _doc(rollout={}), "rollout", "percent_or_waves", None),
    ("rollout percent text", _doc(rollout={"percent": "lots"}), "rollout.percent", "type", None),
    ("prompt 1751 chars", _doc(set={"prompt": "x" * 1751}), "set.prompt", "max_chars", 1750),
    (
        "101 keyterms",
        _doc(set={"keyterms": [f"t{i}" for i in range(101)]}),
        "set.keyterms",
        "max_items",
        100,
    ),
    (
        "keyterm 51 chars",
        _doc(set={"keyterms": ["a", "b", "c", "k" * 51]}),
        "set.keyterms[3]",
        "max_item_chars",
        50,
    ),
    ("keyterms not a list", _doc(set={"keyterms": "acme"}), "set.keyterms", "type", None),
    ("keyterm not a string", _doc(set={"keyterms": ["a", 7]}), "set.keyterms[1]", "type", None),
    (
        "silence as text",
        _doc(set={"max_turn_silence_ms": "2s"}),
        "set.max_turn_silence_ms",
        "type",
        None,
    ),
    (
        "silence over max",
        _doc(set={"max_turn_silence_ms": 10_001}),
        "set.max_turn_silence_ms",
        "max",
        10_000,
    ),
    ("vad threshold bool", _doc(set={"vad_threshold": True}), "set.vad_threshold", "type", None),
    ("unknown set field", _doc(set={"temperature": 1}), "set.temperature", "unknown_field", None),
    ("set not a mapping", _doc(set=["prompt"]), "set", "type", None),
    (
        "min above max silence",
        _doc(set={"min_turn_silence_ms": 900, "max_turn_silence_ms": 800}),
        "set.min_turn_silence_ms",
        "min_le_max",
        800,
    ),
    (
        "variant set over limit",
        _doc(
            experiment={
                "key": "e",
                "variants": [{"name": "a", "weight": 100, "set": {"agent_context": "x" * 1751}}],
            }
        ),
        "experiment.variants[0].set.agent_context",
        "max_chars",
        1750,
    ),
    (
        "variant min above policy max",
        _doc(
            set={"max_turn_silence_ms": 500},
            experiment={
                "key": "e",
                "variants": [{"name": "a", "weight": 100, "set": {"min_turn_silence_ms": 600}}],
            },
        ),
        "experiment.variants[0].set.min_turn_silence_ms",
        "min_le_max",
        500,
    ),
    ("unknown lock field", _doc(lock=["prompt", "promt"]), "lock[1]", "unknown_field", None),
    ("lock not a list", _doc(lock="prompt"), "lock", "type", None),
    ("apply unknown", _doc(apply="later"), "apply", "enum", ["immediate", "next_turn"]),
    ("deadline zero", _doc(apply_deadline_s=0), "apply_deadline_s", "min", 0),
    ("deadline over 300", _doc(apply_deadline_s=301), "apply_deadline_s", "max", 300),
    (
        "kind unknown",
        _doc(match={"kind": "streaming-v2"}),
        "match.kind[0]",
        "enum",
        ["streaming-v3", "voice-agent-v1"],
    ),
    ("match kind empty list", _doc(match={"kind": []}), "match.kind", "min_items", 1),
    (
        "label value number",
        _doc(match={"labels": {"tenant": 42}}),
        "match.labels.tenant[0]",
        "type",
        None,
    ),
    (
        "label value empty list",
        _doc(match={"labels": {"tenant": []}}),
        "match.labels.tenant",
        "min_items",
        1,
    ),
    (
        "label name with space",
        _doc(match={"labels": {"a b": "x"}}),
        "match.labels.a b",
        "pattern",
        None,
    ),
    (
        "labels_not unknown shape",
        _doc(match={"labels_not": "eu"}),
        "match.labels_not",
        "type",
        None,
    ),
    (
        "required and absent label",
        _doc(match={"labels": {"r": "x"}, "labels_absent": ["r"]}),
        "match",
        "conflict",
        None,
    ),
    ("match not a mapping", _doc(match="everything"), "match", "type", None),
    (
        "bucket_by bad label",
        _doc(experiment={**_experiment(100), "bucket_by": "caller id"}),
        "experiment.bucket_by",
        "pattern",
        None,
    ),
    ("description too long", _doc(description="d" * 2001), "description", "max_length", 2000),
]


@pytest.mark.parametrize(
    ("doc", "field", "rule", "limit"),
    [pytest.param(*case[1:], id=case[0]) for case in INVALID],
)
def test_invalid_documents_name_field_rule_and_limit(
    doc: Any, field: str, rule: str, limit: Any
) -> None:
    found = _violations(doc)
    hits = [v for v in found if v.field == field and v.rule == rule]
    assert hits, f"expected {field}/{rule}, got {[v.as_dict() for v in found]}"
    violation = hits[0]
    if limit is not None:
        assert violation.limit == limit
        if isinstance(limit, list):
            assert all(value in violation.message for value in limit)
        elif rule not in ("pattern", "min_items"):
            assert str(limit) in violation.message
    assert violation.message and not violation.message.startswith("Input should")
    json.dumps([v.as_dict() for v in found])  # API-ready


def test_messages_read_as_sentences() -> None:
    (prompt,) = _violations(_doc(set={"prompt": "x" * 1751}))
    assert prompt.message == "is 1751 characters, limit is 1750"
    (terms,) = _violations(_doc(set={"keyterms": ["k"] * 101}))
    assert terms.message == "has 101 items, limit is 100"
    (weights,) = _violations(_doc(experiment=_experiment(50, 40)))
    assert weights.message == "variant weights sum to 90, must be exactly 100"
    (unknown,) = _violations(_doc(prio=1))
    assert "allowed: id, version, priority" in unknown.message
    (pattern,) = _violations(_doc(id="EU"))
    assert "lowercase letters" in pattern.message


def test_an_invalid_only_item_is_reported_once() -> None:
    found = _violations(_doc(match={"kind": "streaming-v2"}))
    assert [(v.field, v.rule) for v in found] == [("match.kind[0]", "enum")]


def test_every_violation_is_reported_at_once() -> None:
    found = _violations(
        {"id": "Bad", "priority": "high", "set": {"prompt": 1}, "rollout": {"percent": 101}}
    )
    assert {v.field for v in found} == {"id", "priority", "set.prompt", "rollout.percent"}


def test_error_carries_policy_id_and_readable_text() -> None:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy(_doc(id="eu", set={"prompt": "x" * 1751}))
    assert caught.value.policy_id == "eu"
    assert str(caught.value) == "policy 'eu': set.prompt: is 1751 characters, limit is 1750"


@pytest.mark.parametrize("doc", [None, [], "id: x", 3])
def test_non_mapping_document_is_refused(doc: Any) -> None:
    (violation,) = _violations(doc)
    assert (violation.field, violation.rule) == ("<document>", "type")


def test_boundaries_are_accepted() -> None:
    policy = parse_policy(
        _doc(
            id="a" * 63,
            priority=-1_000_000,
            set={"prompt": "x" * 1750, "keyterms": ["k" * 50] * 100},
            rollout={"percent": "12.345"},
            experiment=_experiment("33.333", "33.333", "33.334"),
            apply_deadline_s=300,
        )
    )
    assert policy.rollout is not None and policy.rollout.percent == Decimal("12.345")
    assert [v.weight for v in policy.experiment.variants] == [  # type: ignore[union-attr]
        Decimal("33.333"),
        Decimal("33.333"),
        Decimal("33.334"),
    ]


def test_design_example_parses_and_normalises() -> None:
    policy = load_policy_text(DESIGN_EXAMPLE_YAML)
    assert policy.id == "eu-disclosure" and policy.version == 4 and policy.priority == 100
    assert policy.match.kind == ("streaming-v3", "voice-agent-v1")
    assert policy.match.labels == {
        "region": ("eu-west-1", "eu-central-1"),
        "tenant": ("acme",),
    }
    assert policy.set["keyterms"] == ("AssemblyAI",)
    assert policy.lock == ("prompt",)
    assert policy.apply == "immediate" and policy.apply_deadline_s == 10.0
    assert policy.experiment is not None and policy.experiment.bucket_by == "session_id"


def test_yaml_and_json_give_the_same_policy() -> None:
    from_yaml = load_policy_text(DESIGN_EXAMPLE_YAML)
    from_json = load_policy_text(json.dumps(from_yaml.document(), indent=2))
    assert from_json == from_yaml


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("id: [unclosed\n", "syntax"),
        ('{"id": }', "syntax"),
        ("id: a\nid: b\n", "duplicate_key"),
        ('{"id": "a", "id": "b"}', "duplicate_key"),
        ("- id: a\n", "type"),
        ("", "type"),
        ("just text", "type"),
        ("---\nid: a\n---\nid: b\n", "syntax"),
    ],
)
def test_bad_text_is_a_document_violation(text: str, rule: str) -> None:
    with pytest.raises(PolicyValidationError) as caught:
        load_policy_text(text)
    (violation,) = caught.value.violations
    assert (violation.field, violation.rule) == ("<document>", rule)


def test_yaml_errors_in_fields_keep_their_paths() -> None:
    with pytest.raises(PolicyValidationError) as caught:
        load_policy_text("id: p\nrollout:\n  percent: 12.3456\n")
    assert [(v.field, v.rule, v.limit) for v in caught.value.violations] == [
        ("rollout.percent", "max_decimals", 3)
    ]


def test_document_round_trips_and_is_json() -> None:
    policy = load_policy_text(DESIGN_EXAMPLE_YAML)
    doc = policy.document()
    assert json.loads(json.dumps(doc)) == doc
    again = parse_policy(doc)
    assert again == policy
    assert again.document() == doc
    assert doc["rollout"] == {"percent": 25, "bucket_by": "session_id"}
    assert doc["set"]["keyterms"] == ["AssemblyAI"]


def test_fractional_numbers_round_trip() -> None:
    policy = parse_policy(
        _doc(rollout={"percent": 0.125}, experiment=_experiment("33.333", "66.667"))
    )
    doc = json.loads(json.dumps(policy.document()))
    assert doc["rollout"]["percent"] == 0.125
    assert parse_policy(doc) == policy


def test_minimal_policy_defaults() -> None:
    policy = parse_policy({"id": "p"})
    assert policy.version is None and policy.priority == 0 and policy.set == {}
    assert policy.match.document() == {} and policy.lock == ()
    assert policy.document() == {
        "id": "p",
        "priority": 0,
        "match": {},
        "set": {},
        "lock": [],
        "apply": "immediate",
        "apply_deadline_s": 10.0,
    }


def test_scalars_become_tuples_and_lock_is_canonical() -> None:
    policy = parse_policy(
        _doc(
            match={"kind": "voice-agent-v1", "model": "u3-rt-pro", "labels_absent": "vip"},
            lock=["vad_threshold", "prompt", "prompt"],
        )
    )
    assert policy.match.kind == ("voice-agent-v1",)
    assert policy.match.model == ("u3-rt-pro",)
    assert policy.match.labels_absent == ("vip",)
    assert policy.lock == ("prompt", "vad_threshold")


def test_policy_is_frozen() -> None:
    policy = parse_policy(_doc())
    with pytest.raises(ValidationError):
        policy.priority = 5  # type: ignore[misc]


def test_with_version() -> None:
    policy = parse_policy({"id": "p", "experiment": _experiment(50, 50)})
    assert {ref.version for ref in policy.plan.refs} == {0}  # computed, then cached
    v7 = policy.with_version(7)
    assert v7.version == 7 and policy.version is None
    assert {ref.version for ref in v7.plan.refs} == {7}
    assert v7.document() == {**policy.document(), "version": 7}
    with pytest.raises(PolicyValidationError) as caught:
        policy.with_version(0)
    assert caught.value.violations[0].field == "version"


def test_plan_merges_variant_over_policy_set() -> None:
    policy = parse_policy(
        _doc(
            set={"prompt": "base", "vad_threshold": 0.5},
            experiment={
                "key": "e",
                "variants": [
                    {"name": "a", "weight": 25, "set": {"prompt": "variant"}},
                    {"name": "b", "weight": 75},
                ],
            },
        )
    )
    assert policy.plan.weights == (25_000, 75_000)
    assert policy.plan.configs == (
        {"prompt": "variant", "vad_threshold": 0.5},
        {"prompt": "base", "vad_threshold": 0.5},
    )
    assert isinstance(policy, Policy)

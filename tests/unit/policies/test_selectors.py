"""Selectors: kind/model/labels any-of, labels_absent, labels_not; empty match takes all."""

from __future__ import annotations

from typing import Any

import pytest

from policies.model import Match
from policies.selectors import Target, matches

EU_STREAM = Target(
    "s1", "streaming-v3", "u3-rt-pro", {"region": "eu-west-1", "tenant": "acme", "tier": "gold"}
)
US_AGENT = Target("s2", "voice-agent-v1", "universal-3-5-pro", {"region": "us-east-1"})
BARE = Target("s3", "streaming-v3", "universal-streaming-english")

# (case id, match document, target, expected)
CASES: list[tuple[str, dict[str, Any], Target, bool]] = [
    ("empty match takes everything", {}, BARE, True),
    ("kind scalar hit", {"kind": "streaming-v3"}, EU_STREAM, True),
    ("kind scalar miss", {"kind": "streaming-v3"}, US_AGENT, False),
    ("kind any-of", {"kind": ["streaming-v3", "voice-agent-v1"]}, US_AGENT, True),
    ("model any-of hit", {"model": ["universal-3-5-pro", "u3-rt-pro"]}, EU_STREAM, True),
    ("model any-of miss", {"model": ["universal-3-5-pro", "u3-rt-pro"]}, BARE, False),
    ("label any-of hit", {"labels": {"region": ["eu-west-1", "eu-central-1"]}}, EU_STREAM, True),
    ("label any-of miss", {"labels": {"region": ["eu-west-1", "eu-central-1"]}}, US_AGENT, False),
    ("label missing on session", {"labels": {"region": "eu-west-1"}}, BARE, False),
    (
        "all labels must hold",
        {"labels": {"region": "eu-west-1", "tenant": "other"}},
        EU_STREAM,
        False,
    ),
    (
        "all conditions must hold",
        {"kind": "voice-agent-v1", "labels": {"region": "eu-west-1"}},
        EU_STREAM,
        False,
    ),
    ("labels_absent holds", {"labels_absent": ["tier"]}, US_AGENT, True),
    ("labels_absent fails", {"labels_absent": ["tier"]}, EU_STREAM, False),
    (
        "labels_not holds for other value",
        {"labels_not": {"region": ["us-east-1"]}},
        EU_STREAM,
        True,
    ),
    (
        "labels_not fails for listed value",
        {"labels_not": {"region": ["us-east-1", "us-west-2"]}},
        US_AGENT,
        False,
    ),
    ("labels_not holds without the label", {"labels_not": {"region": "us-east-1"}}, BARE, True),
    ("value match is exact", {"labels": {"region": "eu"}}, EU_STREAM, False),
    (
        "combined",
        {
            "kind": "streaming-v3",
            "labels": {"tenant": "acme"},
            "labels_absent": ["trial"],
            "labels_not": {"tier": "free"},
        },
        EU_STREAM,
        True,
    ),
]


@pytest.mark.parametrize(
    ("doc", "target", "expected"), [pytest.param(*c[1:], id=c[0]) for c in CASES]
)
def test_matches(doc: dict[str, Any], target: Target, expected: bool) -> None:
    match = Match.model_validate(doc)
    assert matches(match, target) is expected
    assert match.matches(target) is expected


def test_target_defaults_to_no_labels() -> None:
    assert dict(BARE.labels) == {}
    assert Target("x", "streaming-v3", "m").labels == BARE.labels

"""``Resolver`` (one policy set, many sessions, overlays cached) must equal ``resolve``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.model import Policy, parse_policy
from policies.resolve import Inputs, Resolver, resolve
from policies.selectors import Target

KINDS = ("streaming-v3", "voice-agent-v1")
MODELS = ("u3-rt-pro", "universal-3-5-pro")
REGIONS = ("eu", "us", "ap")


def _policies() -> st.SearchStrategy[list[Policy]]:
    def one(i: int) -> st.SearchStrategy[Policy]:
        doc: dict[str, Any] = {"id": f"p{i}", "version": i + 1}
        return st.builds(
            lambda priority, region, kind, prompt, lock, rollout, experiment, by, dflt: (
                parse_policy(
                    {
                        **doc,
                        "priority": priority,
                        "match": {
                            **({"labels": {"region": [region]}} if region else {}),
                            **({"kind": [kind]} if kind else {}),
                        },
                        "set": {"prompt": prompt, "max_turn_silence_ms": 500 + i},
                        "lock": ["prompt"] if lock else [],
                        **(
                            {"defaults": {"vad_threshold": i / 10, "keyterms": [f"d{i}"]}}
                            if dflt
                            else {}
                        ),
                        **({"rollout": {"percent": rollout, "bucket_by": by}} if rollout else {}),
                        **(
                            {
                                "experiment": {
                                    "key": f"exp{i}",
                                    "bucket_by": by,
                                    "variants": [
                                        {"name": "a", "weight": 50, "set": {}},
                                        {"name": "b", "weight": 50, "set": {"prompt": f"B{i}"}},
                                    ],
                                }
                            }
                            if experiment
                            else {}
                        ),
                    }
                )
            ),
            st.integers(-2, 2),
            st.sampled_from((None, *REGIONS)),
            st.sampled_from((None, *KINDS)),
            st.sampled_from(("x", "y", "z")),
            st.booleans(),
            st.sampled_from((None, 10, 50, 90)),
            st.booleans(),
            st.sampled_from(("session_id", "caller")),
            st.booleans(),
        )

    return st.integers(0, 4).flatmap(lambda n: st.tuples(*(one(i) for i in range(n))).map(list))


TARGETS = st.lists(
    st.builds(
        lambda i, kind, model, region, caller: Target(
            f"s{i}",
            kind,
            model,
            {**({"region": region} if region else {}), **({"caller": caller} if caller else {})},
        ),
        st.integers(0, 40),
        st.sampled_from(KINDS),
        st.sampled_from(MODELS),
        st.sampled_from((None, *REGIONS)),
        st.sampled_from((None, "c1", "c2", "c3")),
    ),
    min_size=1,
    max_size=30,
)
CLIENTS = st.sampled_from(
    (
        {},
        {"prompt": "client"},
        {"keyterms": ("a", "b"), "vad_threshold": 0.4},
        {"keyterms": ["a", "b"]},  # unhashable: merged per session
        {"format_turns": True},
        {"format_turns": 1},  # equal to True, encodes differently: never shared with it
        {"vad_threshold": 1.0},
        {"vad_threshold": 1},
    )
)


@settings(max_examples=200, deadline=None)
@given(_policies(), TARGETS, st.lists(CLIENTS, min_size=30, max_size=30))
def test_resolver_equals_resolve_for_every_target(
    policies: list[Policy], targets: list[Target], clients: list[dict[str, Any]]
) -> None:
    resolver = Resolver(policies)
    for target, client in zip(targets, clients, strict=False):
        got, want = resolver.resolve(client, target), resolve(client, policies, target)
        assert got == want
        # equal is not enough when configs are shared: True == 1 but encodes as "true"
        assert json.dumps(got.config, sort_keys=True) == json.dumps(want.config, sort_keys=True)


def test_sessions_in_different_rollout_buckets_do_not_share_an_overlay() -> None:
    half = parse_policy(
        {"id": "half", "version": 1, "set": {"prompt": "new"}, "rollout": {"percent": 50}}
    )
    resolver = Resolver([half])
    got = {
        resolver.resolve({}, Target(f"s{i}", "streaming-v3", "u3-rt-pro")).config.get("prompt")
        for i in range(200)
    }
    assert got == {"new", None}


def test_only_sessions_with_equal_client_configs_share_an_effective_config() -> None:
    p = parse_policy({"id": "p", "version": 1, "set": {"prompt": "x"}})
    resolver = Resolver([p])

    def config(client: dict[str, Any], sid: str) -> dict[str, Any]:
        return dict(resolver.resolve(client, Target(sid, "streaming-v3", "u3-rt-pro")).config)

    a = resolver.resolve({"vad_threshold": 0.1}, Target("a", "streaming-v3", "u3-rt-pro"))
    b = resolver.resolve({"vad_threshold": 0.9}, Target("b", "streaming-v3", "u3-rt-pro"))
    assert a.config == {"vad_threshold": 0.1, "prompt": "x"}
    assert b.config == {"vad_threshold": 0.9, "prompt": "x"}
    assert a.config is not b.config
    # equal client configs (a fan-out's common case: none at all) share one merge
    c = resolver.resolve({"vad_threshold": 0.1}, Target("c", "streaming-v3", "u3-rt-pro"))
    assert c.config is a.config
    e1 = resolver.resolve({}, Target("e1", "streaming-v3", "u3-rt-pro"))
    assert resolver.resolve({}, Target("e2", "streaming-v3", "u3-rt-pro")) is e1
    # equal but differently typed values are not shared
    assert config({"format_turns": True}, "t") == {"format_turns": True, "prompt": "x"}
    assert json.dumps(config({"format_turns": 1}, "u")) == '{"format_turns": 1, "prompt": "x"}'
    # unhashable values: merged per session, still right
    k1 = resolver.resolve({"keyterms": ["a"]}, Target("k1", "streaming-v3", "u3-rt-pro"))
    k2 = resolver.resolve({"keyterms": ["a"]}, Target("k2", "streaming-v3", "u3-rt-pro"))
    assert k1.config == k2.config == {"keyterms": ["a"], "prompt": "x"}


def test_resolver_refuses_what_resolve_refuses() -> None:
    p = parse_policy({"id": "p", "set": {"prompt": "x"}})
    with pytest.raises(ValueError, match="no version"):
        Resolver([p])
    v = p.with_version(1)
    with pytest.raises(ValueError, match="given twice"):
        Resolver([v, v])


def test_equal_inputs_are_interned_and_a_run_of_them_resolves_once() -> None:
    eu = parse_policy(
        {"id": "eu", "version": 1, "match": {"labels": {"region": ["eu"]}}, "set": {"prompt": "e"}}
    )
    resolver = Resolver([eu])
    a = Inputs.of(Target("a", "streaming-v3", "u3-rt-pro", {"region": "eu"}), {})
    b = Inputs.of(Target("b", "streaming-v3", "u3-rt-pro", {"region": "eu"}), {})
    us = Inputs.of(Target("c", "streaming-v3", "u3-rt-pro", {"region": "us"}), {})
    assert a.key is b.key  # separate label dicts, one key object
    first = resolver.resolve_inputs(a)
    assert resolver.resolve_inputs(b) is first
    other = resolver.resolve_inputs(us)
    assert other.config == {} and first.config == {"prompt": "e"}
    assert resolver.resolve_inputs(a) is first
    # client configs take part: the same labels with another config is another resolution
    mine = Inputs.of(Target("d", "streaming-v3", "u3-rt-pro", {"region": "eu"}), {"prompt": "m"})
    assert resolver.resolve_inputs(mine).config == {"prompt": "e"}
    kept = Inputs.of(
        Target("e", "streaming-v3", "u3-rt-pro", {"region": "eu"}), {"speech_model": "x"}
    )
    assert resolver.resolve_inputs(kept).config == {"speech_model": "x", "prompt": "e"}

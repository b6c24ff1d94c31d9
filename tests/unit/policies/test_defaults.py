"""Policy ``defaults``: a field applied only where the session's client did not set it.

Resolution table (docs/policies.md#defaults): ``set`` (any applying policy, under the lock
ceiling) > the client's value > ``defaults`` (first in precedence order, same ceiling) > the
upstream's default. Validation is ``set``'s (same limits, errors naming ``defaults.<field>``).
"""

from __future__ import annotations

from typing import Any

import pytest

from policies.errors import PolicyValidationError
from policies.fields import Config
from policies.model import Policy, parse_policy
from policies.provenance import PolicyRef
from policies.resolve import Inputs, Resolver, resolve
from policies.selectors import Target

SESSION = Target("sess-1", "streaming-v3", "u3-rt-pro", {"region": "eu"})
FRAMEWORK: Config = {"min_turn_silence_ms": 100, "max_turn_silence_ms": 100}


def policy(pid: str, version: int = 1, *, rank: int = 0, **doc: Any) -> Policy:
    return parse_policy({"id": pid, "version": version, **doc}).with_rank(rank)


DEFAULT = policy("turns", defaults={"max_turn_silence_ms": 2222})


@pytest.mark.parametrize(
    ("client", "policies", "value", "owner"),
    [
        # the default fills only a client config without the field
        ({}, [DEFAULT], 2222, "turns"),
        ({"prompt": "p"}, [DEFAULT], 2222, "turns"),
        (FRAMEWORK, [DEFAULT], 100, None),
        ({"max_turn_silence_ms": 3000}, [DEFAULT], 3000, None),
        # set beats the client and every default, whatever the priorities
        (FRAMEWORK, [DEFAULT, policy("force", priority=-5, set={"max_turn_silence_ms": 900})],
         900, "force"),
        ({}, [policy("both", set={"max_turn_silence_ms": 900},
                     defaults={"max_turn_silence_ms": 2222})], 900, "both"),
        # between defaults: priority, then id
        ({}, [DEFAULT, policy("high", priority=1, defaults={"max_turn_silence_ms": 3333})],
         3333, "high"),
        ({}, [DEFAULT, policy("aaa", defaults={"max_turn_silence_ms": 4444})], 4444, "aaa"),
        # a lock of a higher role is a ceiling for defaults too: the client value (none) stays
        ({}, [DEFAULT, policy("locker", rank=3, lock=["max_turn_silence_ms"])], None, None),
        # an equal or higher role's default still fills under the lock
        ({}, [policy("locker", rank=3, lock=["max_turn_silence_ms"]),
              policy("compliance", rank=3, defaults={"max_turn_silence_ms": 5555})],
         5555, "compliance"),
        # a lower-ranked default loses to the ceiling even with a higher-ranked default below it
        ({}, [policy("low", rank=1, priority=9, defaults={"max_turn_silence_ms": 1111}),
              policy("locker", rank=3, lock=["max_turn_silence_ms"],
                     defaults={"max_turn_silence_ms": 6666})],
         6666, "locker"),
    ],
)  # fmt: skip
def test_resolution_table(
    client: Config, policies: list[Policy], value: int | None, owner: str | None
) -> None:
    effective = resolve(client, policies, SESSION)
    assert effective.config.get("max_turn_silence_ms") == value
    ref = effective.provenance.get("max_turn_silence_ms")
    assert (ref.id if ref else None) == owner
    # the Resolver (the fan-out's cached path) agrees, cold and warm
    resolver = Resolver(policies)
    for _ in range(2):
        assert resolver.resolve_inputs(Inputs.of(SESSION, client)) == effective


def test_sessions_sharing_an_overlay_get_the_default_only_where_their_client_lacks_it() -> None:
    resolver = Resolver([DEFAULT, policy("eu", set={"prompt": "EU"})])
    bare = resolver.resolve({}, SESSION)
    chosen = resolver.resolve(FRAMEWORK, SESSION)
    again = resolver.resolve({}, Target("sess-2", "streaming-v3", "u3-rt-pro", {"region": "eu"}))
    assert bare.config == {"prompt": "EU", "max_turn_silence_ms": 2222}
    assert bare.provenance == {"prompt": PolicyRef("eu", 1), "max_turn_silence_ms": DEFAULT_REF}
    assert chosen.config == {**FRAMEWORK, "prompt": "EU"}
    assert chosen.provenance == {"prompt": PolicyRef("eu", 1)}  # the client owns its silences
    assert again is bare  # equal client configs still share one Effective


DEFAULT_REF = PolicyRef("turns", 1)


def test_a_client_that_later_sets_the_field_keeps_it_and_clearing_it_brings_the_default() -> None:
    assert resolve({}, [DEFAULT], SESSION).config == {"max_turn_silence_ms": 2222}
    assert resolve({"max_turn_silence_ms": 150}, [DEFAULT], SESSION).config == {
        "max_turn_silence_ms": 150
    }


def test_retiring_the_policy_takes_its_default_back() -> None:
    assert "max_turn_silence_ms" not in resolve({}, [], SESSION).config


def test_defaults_are_validated_like_set() -> None:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy({"id": "p", "defaults": {"max_turn_silence_ms": 10_001, "nope": 1}})
    paths = {v.field: v for v in caught.value.violations}
    assert set(paths) == {"defaults.max_turn_silence_ms", "defaults.nope"}
    assert paths["defaults.max_turn_silence_ms"].limit == 10_000
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy({"id": "p", "defaults": {"min_turn_silence_ms": 500},
                      "set": {"max_turn_silence_ms": 400}})  # fmt: skip
    assert [(v.field, v.rule) for v in caught.value.violations] == [
        ("defaults.min_turn_silence_ms", "min_le_max")
    ]
    with pytest.raises(PolicyValidationError):
        parse_policy({"id": "p", "defaults": {"prompt": None}})


def test_document_round_trips_and_omits_empty_defaults() -> None:
    doc = DEFAULT.document()
    assert doc["defaults"] == {"max_turn_silence_ms": 2222}
    assert parse_policy(doc) == DEFAULT
    plain = policy("plain", set={"prompt": "x"})
    assert "defaults" not in plain.document()  # digests of existing documents unchanged

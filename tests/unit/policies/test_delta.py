"""Canonical deltas: diff / apply / is_empty and the law apply(old, diff(old, new)) == new."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.delta import apply, diff, is_empty
from policies.fields import Config, Value, validate_config

text = st.text(max_size=40)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "prompt": text,
    "system_prompt": text,
    "agent_context": text,
    "keyterms": st.lists(st.text(min_size=1, max_size=10).filter(str.strip), max_size=4).map(tuple),
    "min_turn_silence_ms": st.integers(50, 10_000),
    "max_turn_silence_ms": st.integers(50, 10_000),
    "vad_threshold": st.floats(0.0, 1.0),
}


@st.composite
def configs(draw: st.DrawFn) -> Config:
    names = draw(st.sets(st.sampled_from(sorted(VALUES))))
    config: Config = {name: draw(VALUES[name]) for name in sorted(names)}
    return config


LAW = settings(max_examples=400, deadline=None)


@LAW
@given(old=configs(), new=configs())
def test_apply_of_diff_gives_new(old: Config, new: Config) -> None:
    assert validate_config(new, "set") == new  # generated configs are canonical
    frozen_old = dict(old)
    assert apply(old, diff(old, new)) == new
    assert old == frozen_old  # inputs untouched


@LAW
@given(old=configs(), new=configs())
def test_diff_names_only_changes(old: Config, new: Config) -> None:
    delta = diff(old, new)
    for name, value in delta.items():
        if value is None:
            assert name in old and name not in new
        else:
            assert new[name] == value and old.get(name) != value
    unchanged = {n for n in set(old) | set(new) if old.get(n) == new.get(n)}
    assert not unchanged & set(delta)
    assert is_empty(delta) == (old == new)


@LAW
@given(config=configs())
def test_diff_with_itself_is_empty(config: Config) -> None:
    assert is_empty(diff(config, config))


def test_examples() -> None:
    old: dict[str, Value] = {"prompt": "a", "keyterms": ("x",), "vad_threshold": 0.5}
    new: dict[str, Value] = {"prompt": "b", "keyterms": ("x",), "max_turn_silence_ms": 900}
    assert diff(old, new) == {"prompt": "b", "max_turn_silence_ms": 900, "vad_threshold": None}
    assert apply(old, {"prompt": None, "agent_context": None}) == {
        "keyterms": ("x",),
        "vad_threshold": 0.5,
    }
    assert is_empty({}) and not is_empty({"prompt": None})

"""Canonical deltas between two configs.

A delta maps each changed field to its new value, or to ``None`` when the field is unset in the
new config (the dialect turns that into the protocol's way of restoring the default).
Law (property-tested): ``apply(old, diff(old, new)) == new``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from policies.fields import Delta, Value

V = TypeVar("V")

__all__ = ["apply", "diff", "is_empty"]


def diff(old: Mapping[str, Value], new: Mapping[str, Value]) -> Delta:
    """Fields whose value differs from ``old`` to ``new``; removed fields map to ``None``."""
    delta: Delta = {name: value for name, value in new.items() if old.get(name) != value}
    for name in old:
        if name not in new:
            delta[name] = None
    return delta


def apply(config: Mapping[str, V], delta: Mapping[str, V | None]) -> dict[str, V]:
    """A new config: ``config`` with ``delta`` applied (``None`` removes the field). Works
    for any such mapping (a session's labels are patched the same way)."""
    out = dict(config)
    for name, value in delta.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def is_empty(delta: Mapping[str, Value | None]) -> bool:
    """Whether ``delta`` changes nothing."""
    return not delta

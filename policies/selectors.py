"""Selectors: which live sessions a policy's ``match`` targets.

A :class:`Target` is what the resolver knows about a session. :func:`matches` is pure and cheap
(tuple membership, no allocation); it runs for every session on every policy event.

Rules (all given conditions must hold; an empty match targets every session):

- ``kind`` / ``model``: the session's value is one of the listed values;
- ``labels``: for every listed label, the session carries it with one of the listed values;
- ``labels_absent``: the session carries none of these labels;
- ``labels_not``: for every listed label, the session's value is not one of the listed values
  (a session without the label satisfies this).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from types import MappingProxyType
from typing import Protocol

from policies.values import value

__all__ = ["Selector", "Target", "matches"]

_NO_LABELS: Mapping[str, str] = MappingProxyType({})


class Selector(Protocol):
    """The conditions of a ``match`` (``policies.model.Match`` is one): read-only."""

    @property
    def kind(self) -> tuple[str, ...]: ...

    @property
    def model(self) -> tuple[str, ...]: ...

    @property
    def labels(self) -> Mapping[str, tuple[str, ...]]: ...

    @property
    def labels_absent(self) -> tuple[str, ...]: ...

    @property
    def labels_not(self) -> Mapping[str, tuple[str, ...]]: ...


@value
class Target:
    """A session as the resolver sees it: ``id`` (the session id), ``kind``, ``model``, labels."""

    id: str
    kind: str
    model: str
    labels: Mapping[str, str] = field(default_factory=lambda: _NO_LABELS)


def matches(match: Selector, target: Target) -> bool:
    """Whether ``target`` satisfies every condition of ``match``."""
    if match.kind and target.kind not in match.kind:
        return False
    if match.model and target.model not in match.model:
        return False
    labels = target.labels
    for name, allowed in match.labels.items():
        value = labels.get(name)
        if value is None or value not in allowed:
            return False
    for name in match.labels_absent:
        if name in labels:
            return False
    for name, banned in match.labels_not.items():
        value = labels.get(name)
        if value is not None and value in banned:
            return False
    return True

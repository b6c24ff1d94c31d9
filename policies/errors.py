"""Errors raised by the policy domain.

Tree::

    PolicyError                      root; permanent (retrying the same input fails the same way)
    └── PolicyValidationError        a document or value breaks a rule; carries every violation

Each violation names the field (dotted path), the rule it broke and, where there is one, the
limit, so that an API or CLI can print it verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PolicyError", "PolicyValidationError", "Violation"]


class PolicyError(Exception):
    """Root of the policy domain's errors."""

    retryable = False


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``field`` is a dotted path such as ``set.keyterms[3]``."""

    field: str
    rule: str
    message: str
    limit: Any = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "rule": self.rule, "message": self.message}
        if self.limit is not None:
            out["limit"] = self.limit
        return out


@dataclass
class PolicyValidationError(PolicyError):
    """A policy document or canonical value is invalid; ``violations`` lists every problem."""

    violations: list[Violation] = field(default_factory=list)
    policy_id: str | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"policy {self.policy_id!r}: " if self.policy_id else ""
        return prefix + "; ".join(f"{v.field}: {v.message}" for v in self.violations)

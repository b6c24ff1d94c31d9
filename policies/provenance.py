"""Provenance: which policy version (and variant) set a field or applies to a session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PolicyRef"]


@dataclass(frozen=True, slots=True)
class PolicyRef:
    id: str
    version: int
    variant: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "variant": self.variant}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PolicyRef:
        return cls(str(raw["id"]), int(raw["version"]), raw.get("variant"))

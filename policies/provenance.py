"""Provenance: which policy version (and variant) set a field or applies to a session.

A ref names a version by ``id`` and ``version`` and, unambiguously, by ``digest``: the sha256
(hex) of the version's canonical document (:func:`document_digest` of ``Policy.document()``).
The digest takes no part in equality: one ``(id, version)`` has one document for good
(versions are never reused), so refs compare as they always did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["PolicyRef", "document_digest"]

_encode: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def document_digest(document: Mapping[str, Any]) -> str:
    """sha256 hex of a policy document's canonical JSON (sorted keys, no spaces, UTF-8):
    the same bytes as ``sessions.versionchain.canonical_json``."""
    return hashlib.sha256(_encode(document).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PolicyRef:
    id: str
    version: int
    variant: str | None = None
    digest: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """``id``, ``version``, ``variant`` and, when known, ``digest``."""
        out = {"id": self.id, "version": self.version, "variant": self.variant}
        if self.digest is not None:
            out["digest"] = self.digest
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PolicyRef:
        digest = raw.get("digest")
        return cls(str(raw["id"]), int(raw["version"]), raw.get("variant"),
                   None if digest is None else str(digest))  # fmt: skip

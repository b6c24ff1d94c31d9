"""Reading the shipped audit trail back: what a reader of the stored trail offers
(``AuditReader``: ``CP_AUDIT`` through ``controlplane.cluster.nats_audit``, the local files
through ``controlplane.audit.sources``) and ``dedupe``, which drops the exact duplicates a
re-shipped batch leaves (``controlplane.audit.shipper``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["AuditReader", "dedupe"]


class AuditReader(Protocol):
    async def has_trail(self, session_id: str) -> bool:
        """Whether any entry of this session is stored."""
        ...

    async def session_rows(self, session_id: str) -> list[dict[str, Any]]:
        """One session's stored entries in order (exact duplicates dropped)."""
        ...

    async def checkpoint_rows(self) -> list[dict[str, Any]]:
        """Every stored checkpoint record, in order."""
        ...


def dedupe(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Drop rows identical in seq and hash to an earlier row (a re-shipped entry); a row with
    the same seq but another hash is kept, so verification still reports it."""
    seen: set[tuple[Any, Any]] = set()
    out: list[dict[str, Any]] = []
    for row in rows:
        key = (row.get("seq"), row.get("hash"))
        if key[1] is not None and key in seen:
            continue
        seen.add(key)
        out.append(dict(row))
    return out

"""The in-memory version-log backend, for tests and demos (``sessions.versionlog.core`` does
the chaining, buffering and group commit)."""

from __future__ import annotations

import json
from typing import Any

from mypy_extensions import mypyc_attr

from sessions.clock import Clock
from sessions.versionchain import LogEntry, VerifyReport, verify_entries
from sessions.versionlog.core import BufferedVersionLog, Pending, parse_entries

__all__ = ["MemoryVersionLog"]


@mypyc_attr(allow_interpreted_subclasses=True)  # (compiled: tests derive fault-injecting logs)
class MemoryVersionLog(BufferedVersionLog):
    """In-process log for tests and demos. ``storage`` holds the flushed rows (plain dicts
    exactly as a durable backend would hold them), per session, in append order."""

    def __init__(self, clock: Clock, *, flush_interval_s: float | None = 0.05) -> None:
        super().__init__(clock, flush_interval_s=flush_interval_s)
        self.storage: dict[str, list[dict[str, Any]]] = {}

    async def _write(self, batch: list[Pending]) -> None:
        for item in batch:
            self.storage.setdefault(item.session_id, []).append(json.loads(item.line))

    async def entries(self, session_id: str) -> list[LogEntry]:
        await self.flush()
        return parse_entries(session_id, self.storage.get(session_id, []))

    async def verify(self, session_id: str | None = None) -> list[VerifyReport]:
        await self.flush()
        ids = sorted(self.storage) if session_id is None else [session_id]
        return [verify_entries(s, self.storage.get(s, []), tail=self._tails.get(s)) for s in ids]

    async def session_ids(self) -> list[str]:
        await self.flush()
        return sorted(self.storage)

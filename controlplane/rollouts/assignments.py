"""Sticky A/B assignments of live and ended sessions (``GET /v1/experiments/{key}/assignments``).

Live sessions are read from the push engine on demand; a session's rows are kept here when
it ends (at most ``MAX_ENDED`` rows, oldest dropped first), so an export after a call ended
still shows which variant it ran.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Final

from controlplane.intake.bus import rfc3339
from controlplane.push.live import LiveSession
from policies.bucketing import bucket
from policies.model import Policy

__all__ = ["MAX_ENDED", "AssignmentBook", "assignments_of"]

MAX_ENDED: Final = 100_000


def assignments_of(ls: LiveSession, policies: Mapping[str, Policy]) -> list[dict[str, Any]]:
    """One row per experiment the session is bucketed into."""
    rows = []
    for ref in ls.session.applied:
        policy = policies.get(ref.id)
        if ref.variant is None or policy is None or policy.experiment is None:
            continue
        exp = policy.experiment
        value = (
            ls.session.bucket_key
            if exp.bucket_by == "session_id"
            else ls.session.labels.get(exp.bucket_by, "")
        )
        rows.append({
            "experiment": exp.key, "iteration": exp.iteration, "session_id": ls.session.id,
            "policy": ref.id,
            "version": ref.version, "variant": ref.variant, "bucket_by": exp.bucket_by,
            "bucket_value": value,
            "bucket": round(bucket(exp.key, exp.effective_salt, value), 8),
            "kind": ls.session.kind, "model": ls.session.model,
            "assigned_at": rfc3339(ls.session.created_at),
            "state": ls.session.state.value, "call_id": ls.session.bucket_key,
        })  # fmt: skip
    return rows


class AssignmentBook:
    def __init__(self, max_ended: int = MAX_ENDED) -> None:
        self._max = max_ended
        # (experiment key, session id) -> row, for sessions that have ended
        self._ended: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    def ended(self, ls: LiveSession, policies: Mapping[str, Policy]) -> None:
        """Keep the rows of a session that just ended."""
        for row in assignments_of(ls, policies):
            row["state"] = "ended"
            self._ended[(row["experiment"], ls.session.id)] = row
        while len(self._ended) > self._max:
            self._ended.popitem(last=False)

    def rows(
        self, key: str, live: Iterable[LiveSession], policies: Mapping[str, Policy]
    ) -> list[dict[str, Any]]:
        """Every assignment of experiment ``key``, ended and live, in session id order."""
        out: dict[str, dict[str, Any]] = {}
        for (exp_key, session_id), row in self._ended.items():
            if exp_key == key:
                out[session_id] = row
        for ls in live:
            for row in assignments_of(ls, policies):
                if row["experiment"] == key:
                    out[ls.session.id] = row
        return [out[k] for k in sorted(out)]

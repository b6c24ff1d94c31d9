"""The audit trail verified as a whole: every session's hash chain plus the signed checkpoints
(``sessions.checkpoints``) that commit to the chains' heads. Pure: the callers read the rows
(file backend, ``CP_AUDIT``) and hand them over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sessions.checkpoints import CheckpointReport, check_heads, is_checkpoint, verify_checkpoints
from sessions.config_at import config_at
from sessions.versionchain import VerifyReport, verify_entries

__all__ = [
    "REPORT_KEYS",
    "StoredTrail",
    "TrailReport",
    "config_at_report",
    "group_rows",
    "verify_trail",
]

# the members of one session's report in JSON answers (REST, CLI --json)
REPORT_KEYS: Final = ("session_id", "ok", "count", "first_bad_seq", "problem", "covered_seq")


@runtime_checkable
class StoredTrail(Protocol):
    """A version-log backend that can hand its stored rows and checkpoints to a verifier."""

    async def stored_rows(self, session_id: str | None = None) -> list[dict[str, Any]]: ...

    async def checkpoint_rows(self) -> list[dict[str, Any]]: ...

    def tail(self, session_id: str) -> tuple[int, str] | None: ...


@dataclass(frozen=True, slots=True)
class TrailReport:
    sessions: list[VerifyReport]
    checkpoints: CheckpointReport

    @property
    def ok(self) -> bool:
        return self.checkpoints.ok and all(r.ok for r in self.sessions)

    def to_dict(self) -> dict[str, Any]:
        items = [{k: getattr(r, k) for k in REPORT_KEYS} for r in self.sessions]
        return {"items": items, "ok": self.ok, "checkpoints": self.checkpoints.to_dict()}


def group_rows(
    rows: Iterable[Mapping[str, Any]], session_id: str | None = None
) -> tuple[dict[str, list[Mapping[str, Any]]], list[Mapping[str, Any]]]:
    """Split stored rows into entries per session (stored order) and checkpoint records. A row
    that is neither keeps its place in ``session_id``'s group (or ``"?"``): verify names it."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    checkpoints: list[Mapping[str, Any]] = []
    for row in rows:
        if is_checkpoint(row):
            checkpoints.append(row)
            continue
        sid = row.get("session_id")
        key = session_id if session_id is not None else sid if isinstance(sid, str) else "?"
        groups.setdefault(key, []).append(row)
    return groups, checkpoints


def verify_trail(
    groups: Mapping[str, Sequence[Mapping[str, Any]]],
    checkpoint_rows: Iterable[Mapping[str, Any]],
    *,
    trusted: Sequence[Ed25519PublicKey] | None = None,
    tails: Mapping[str, tuple[int, str]] | None = None,
    session_id: str | None = None,
) -> TrailReport:
    """Chains (one report per session in ``groups``, plus every session a checkpoint names,
    so a session whose every entry was deleted is reported) and checkpoints.

    With ``session_id`` only that session's chain is reported; the checkpoints are always
    verified whole (a bad checkpoint is bad for every session). ``tails``: what a live writer
    last appended per session (``verify_entries``)."""
    report = verify_checkpoints(checkpoint_rows, trusted)
    everyone = set(groups) | set(report.commits)
    ids = [session_id] if session_id is not None else sorted(everyone)
    sessions = []
    for sid in ids:
        rows = groups.get(sid, ())
        chain = verify_entries(sid, rows, tail=None if tails is None else tails.get(sid))
        sessions.append(check_heads(chain, rows, report.commits.get(sid, ())))
    return TrailReport(sessions, report)


def config_at_report(
    session_id: str,
    rows: Sequence[Mapping[str, Any]],
    checkpoint_rows: Iterable[Mapping[str, Any]],
    at: float,
    *,
    trusted: Sequence[Ed25519PublicKey] | None = None,
    tail: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """``config_at`` plus the evidence around it: whether the session's chain verifies, and
    whether a valid signed checkpoint covers the entry that established the config.

    Raises what ``config_at`` raises (unknown session, instant before it, no connect config)."""
    found = config_at(session_id, rows, at)
    trail = verify_trail(
        {session_id: rows}, checkpoint_rows, trusted=trusted,
        tails=None if tail is None else {session_id: tail}, session_id=session_id,
    )  # fmt: skip
    chain = trail.sessions[0]
    seq = found.established_by.get("seq")
    named = None if found.policies_by is None else found.policies_by.get("seq")
    if isinstance(named, int) and isinstance(seq, int):  # the entry naming the policies too
        seq = max(seq, named)
    commit = next(
        (c for c in trail.checkpoints.commits.get(session_id, ()) if isinstance(seq, int)
         and c.seq >= seq),
        None,
    )  # fmt: skip
    covered = commit is not None and chain.covered_seq is not None and commit.seq <= (
        chain.covered_seq
    )  # fmt: skip
    checkpoints = trail.checkpoints
    out = found.to_dict()
    out["chain"] = {k: getattr(chain, k) for k in REPORT_KEYS if k != "session_id"}
    out["checkpoint"] = {
        "covered": covered,
        "node": None if commit is None else commit.node,
        "seq": None if commit is None else commit.checkpoint,
        "committed_seq": None if commit is None else commit.seq,
        "checkpoints_ok": checkpoints.ok,
        "first_bad": None if checkpoints.first_bad is None else checkpoints.first_bad.to_dict(),
        "trust": checkpoints.trust,
        "trusted_keys": checkpoints.trusted,
    }
    # coverage is reported, not required: the newest entries wait for the next checkpoint
    out["verified"] = found.verified and chain.ok and checkpoints.ok
    return out

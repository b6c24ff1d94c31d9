"""Where ``audit verify`` and ``audit at`` read the trail from, and their JSON answers.

Three sources, one verification (``sessions.audit_trail``): the local JSONL files of a
``FileVersionLog`` (the server, or ``--data-dir`` offline), and the durable stream
``CP_AUDIT`` (another replica's session on the server, or ``--nats-url`` offline). Checkpoint
records are always read *before* the entries, so every head a checkpoint commits to is already
stored when the entries are read (no false "truncated" while the writer runs).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from controlplane.audit.reader import AuditReader
from controlplane.errors import BadRequest, Conflict, NotFound
from sessions.audit_trail import StoredTrail, config_at_report, verify_trail
from sessions.checkpoints import load_public_key
from sessions.errors import NotRebuildable, UnknownSession
from sessions.versionlog.core import VersionLog

__all__ = [
    "CHECKPOINT_GRACE_S",
    "INSTANT_PATTERN",
    "PUBLIC_KEY_B64",
    "Trail",
    "checkpoint_evidence",
    "config_at_answer",
    "parse_instant",
    "parse_public_keys",
    "read_trail",
    "require_checkpoints",
    "verify_answer",
]


PUBLIC_KEY_B64: Final = re.compile(r"[A-Za-z0-9+/]{43}=")
_YEAR = "(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_DAY = (
    f"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-"
    "(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))|(?:[0-9]{2}(?:0[48]|[2468][048]|"
    "[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)-02-29)"
)
# what parse_instant takes, as /openapi.json states it: RFC 3339 (no zone: UTC), a space or
# T between date and time; or Unix seconds. Only real dates (leap years counted).
INSTANT_PATTERN: Final = (
    f"^(?:-?[0-9]{{1,12}}(?:\\.[0-9]{{1,9}})?|{_DAY}[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9]:"
    "[0-5][0-9](?:\\.[0-9]{1,6})?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?)$"
)
_INSTANT: Final = re.compile(INSTANT_PATTERN)
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# entries younger than this may still await their checkpoint (default interval 10 s)
CHECKPOINT_GRACE_S: Final = 60.0


@dataclass
class Trail:
    """Stored rows, grouped per session, and checkpoint records, as read from one source."""

    source: str  # "local" or "CP_AUDIT" (said in answers)
    groups: dict[str, list[dict[str, Any]]]
    checkpoints: list[dict[str, Any]]
    tails: Mapping[str, tuple[int, str]] = field(default_factory=dict)


async def read_trail(
    versionlog: VersionLog,
    stream: AuditReader | None,
    session_id: str | None,
    *,
    remote: bool,
) -> Trail:
    """``remote``: the session is another replica's (read ``stream``; the local log when the
    stream holds nothing of it). Backends that keep no checkpoints give an empty list."""
    if remote and stream is not None and session_id is not None:
        checkpoints = await stream.checkpoint_rows()
        rows = await stream.session_rows(session_id)
        if rows:
            return Trail("CP_AUDIT", {session_id: rows}, checkpoints)
    if isinstance(versionlog, StoredTrail):
        checkpoints = await versionlog.checkpoint_rows()
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in await versionlog.stored_rows(session_id):
            groups.setdefault(str(row.get("session_id")), []).append(row)
        tails = {}
        for sid in groups if session_id is None else [session_id]:
            tail = versionlog.tail(sid)
            if tail is not None:
                tails[sid] = tail
        if session_id is not None:
            groups.setdefault(session_id, [])
        return Trail("local", groups, checkpoints, tails)
    # a backend without stored rows (memory, Redis): its entries, no checkpoints
    ids = [session_id] if session_id is not None else await versionlog.session_ids()
    groups = {sid: [e.to_dict() for e in await versionlog.entries(sid)] for sid in ids}
    return Trail("local", groups, [])


def parse_instant(value: str) -> float:
    """RFC 3339 (``2026-01-31T12:00:00Z``; no zone means UTC) or Unix seconds, exactly as
    :data:`INSTANT_PATTERN` says; ValueError names the input."""
    if not _INSTANT.match(value) or value.endswith("\n"):
        raise ValueError(
            f"not an RFC 3339 time (2026-01-31T12:00:00Z) or Unix seconds: {value!r:.60}"
        )
    if ":" not in value:
        return float(value)
    stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return (stamp - _EPOCH).total_seconds()  # never overflows (years 1-9999, any offset)


def parse_public_keys(values: Sequence[str | bytes]) -> list[Ed25519PublicKey] | None:
    """Pinned checkpoint keys (REST ``public_key``: base64 of the raw 32 bytes, 44 characters,
    exactly as ``/openapi.json`` says); None when none given."""
    keys = []
    for i, value in enumerate(values):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        if not PUBLIC_KEY_B64.fullmatch(text):
            raise BadRequest(
                f"public key {i + 1}: must be base64 of the raw 32-byte Ed25519 key "
                "(44 characters ending in '=')",
                code="bad_public_key",
            )
        try:
            keys.append(load_public_key(value.encode() if isinstance(value, str) else value))
        except ValueError as exc:
            raise BadRequest(f"public key {i + 1}: {exc}", code="bad_public_key") from None
    return keys or None


def verify_answer(
    trail: Trail, session_id: str | None, trusted: Sequence[Ed25519PublicKey] | None
) -> dict[str, Any]:
    """``{"items": [one report per session], "ok", "checkpoints": {...}, "source"}``."""
    report = verify_trail(trail.groups, trail.checkpoints, trusted=trusted, tails=trail.tails,
                          session_id=session_id)  # fmt: skip
    return {**report.to_dict(), "source": trail.source}


def checkpoint_evidence(data_dir: Path) -> list[str]:
    """What in a data directory shows its writer was signing checkpoints: the node's key
    (``keys/audit-signing.key``, created by ``serve``) and the public keys the log publishes
    next to its files (``audit/signing-key-*.pub``)."""
    found = []
    key = data_dir / "keys" / "audit-signing.key"
    if key.is_file():
        found.append(f"the node's signing key {key} is present")
    published = sorted(p.name for p in (data_dir / "audit").glob("signing-key-*.pub"))
    if published:
        found.append(f"the log publishes {', '.join(published)}")
    return found


def require_checkpoints(
    answer: dict[str, Any],
    trail: Trail,
    evidence: Sequence[str],
    *,
    now: float,
    grace_s: float = CHECKPOINT_GRACE_S,
) -> dict[str, Any]:
    """``answer`` failed (``ok`` false, a checkpoint problem of kind ``missing``) when
    ``evidence`` shows checkpoints were being written but entries older than ``grace_s``
    (at ``now``) are covered by none: their checkpoints were deleted, and with them the proof
    of those sessions' newest entries. Younger entries may simply await the writer's next
    checkpoint (every 10 s by default)."""
    if not evidence:
        return answer
    overdue: list[tuple[float, str, int]] = []
    for report in answer.get("items") or []:
        sid, covered = report.get("session_id"), report.get("covered_seq") or 0
        for row in trail.groups.get(str(sid)) or ():
            seq, at = row.get("seq"), row.get("at")
            if (isinstance(seq, int) and seq > covered and isinstance(at, int | float)
                    and now - at > grace_s):  # fmt: skip
                overdue.append((float(at), str(sid), seq))
    if not overdue:
        return answer
    checkpoints = answer.get("checkpoints") or {}
    at, sid, seq = min(overdue)
    none = "no checkpoint records, but " if not checkpoints.get("count") else ""
    problem = (
        f"missing: {none}{len(overdue)} entries older than {grace_s:g}s are covered by no "
        f"checkpoint (oldest: session {sid} seq {seq}), while " + "; ".join(evidence) + ": "
        "checkpoints were being written and have been removed (or the writer died before "
        "writing them); the newest entries of a session could be missing unnoticed "
        "(offline, audit verify --data-dir … --allow-missing-checkpoints accepts this trail)"
    )
    bad = {"node": None, "seq": None, "kind": "missing", "problem": problem}
    checkpoints = {**checkpoints, "ok": False, "first_bad": checkpoints.get("first_bad") or bad,
                   "problems": [*(checkpoints.get("problems") or []), bad]}  # fmt: skip
    return {**answer, "ok": False, "checkpoints": checkpoints}


def config_at_answer(
    trail: Trail, session_id: str, at: float, trusted: Sequence[Ed25519PublicKey] | None
) -> dict[str, Any]:
    """The config in effect at ``at`` with its evidence (``sessions.audit_trail``). 404
    ``session_not_found`` without entries; 404 ``before_session`` for an instant before the
    first entry; 409 ``not_rebuildable`` for a log written before connect configs were kept."""
    rows = trail.groups.get(session_id) or []
    try:
        answer = config_at_report(session_id, rows, trail.checkpoints, at, trusted=trusted,
                                  tail=trail.tails.get(session_id))  # fmt: skip
    except UnknownSession:
        raise NotFound(f"no version log entries for session {session_id!r}",
                       code="session_not_found") from None  # fmt: skip
    except NotRebuildable as exc:
        if rows and at < _first_at(rows):
            raise NotFound(str(exc), code="before_session") from None
        raise Conflict(str(exc), code="not_rebuildable") from None
    return {**answer, "source": trail.source}


def _first_at(rows: Sequence[Mapping[str, Any]]) -> float:
    stamps = [float(r["at"]) for r in rows if isinstance(r.get("at"), int | float)]
    return min(stamps) if stamps else float("inf")

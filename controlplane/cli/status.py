"""``controlplane sessions status [--policy ID]``: per live session and policy version, where
the version's delivery stands, in the style of ``istioctl proxy-status``.

Read from what every replica shares: the session list (``GET /v1/sessions``) gives each live
session's policy versions in effect (``applied``), and the session's version log
(``GET /v1/sessions/{id}/log``) how far the newest entry naming that version got:

- ``SYNCED``: ``acked`` (or ``unchanged``: nothing to send, the session already ran it);
- ``NOT SENT``: no entry names the version yet (it waits: an update outstanding, a turn
  boundary, a busy worker);
- ``SENT``: written to an acknowledging session, the acknowledgement awaited;
- ``STALE``: written to an acknowledging session and no acknowledgement came in time (the
  entry is ``unverified``, or it is still ``sent`` past ``--stale-after``);
- ``REJECTED``: the push carrying the version was refused;
- ``UNVERIFIED``: written to a Streaming v3 session, whose protocol acknowledges nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from controlplane.cli.http import ControlPlaneClient

__all__ = ["ACKNOWLEDGING_KINDS", "STATUS_HEADERS", "policy_status", "status_rows"]

ACKNOWLEDGING_KINDS: Final = frozenset({"voice-agent-v1"})
STATUS_HEADERS: Final = ("SESSION", "KIND", "NODE", "POLICY", "VERSION", "VARIANT", "STATUS",
                         "SINCE", "SEQ")  # fmt: skip


def _names(entry: Mapping[str, Any], policy_id: str, version: int) -> bool:
    return any(
        isinstance(ref, Mapping) and ref.get("id") == policy_id and ref.get("version") == version
        for ref in entry.get("policies") or ()
    )


def policy_status(
    kind: str,
    log: Sequence[Mapping[str, Any]],
    policy_id: str,
    version: int,
    *,
    now: float,
    stale_after_s: float,
) -> tuple[str, Mapping[str, Any] | None]:
    """(status, the newest log entry naming ``policy_id`` at ``version``, if any)."""
    entry = next((e for e in reversed(log) if _names(e, policy_id, version)), None)
    if entry is None:
        return "NOT SENT", None
    status = entry.get("status")
    acknowledging = kind in ACKNOWLEDGING_KINDS
    if status in ("acked", "unchanged", "skipped"):
        return "SYNCED", entry
    if status == "rejected":
        return "REJECTED", entry
    if not acknowledging:  # sent / unverified on Streaming v3: no acknowledgement exists
        return "UNVERIFIED", entry
    if status == "unverified":
        return "STALE", entry
    at = entry.get("at")
    late = isinstance(at, int | float) and now - float(at) > stale_after_s
    return ("STALE" if late else "SENT"), entry


def status_rows(
    client: ControlPlaneClient,
    *,
    policy: str | None,
    selector: Sequence[str],
    kind: str | None,
    stale_after_s: float,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per live session and policy version in effect (``policy``: only that policy;
    a session without any policy gets one row with ``policy`` None unless ``policy`` is set).
    ``progress(done, total)`` after each session (one log read each: long for thousands)."""
    rows: list[dict[str, Any]] = []
    sessions = client.list_sessions(selector=selector, kind=kind)
    for done, session in enumerate(sessions, 1):
        if progress is not None:
            progress(done - 1, len(sessions))
        refs = [r for r in session.get("applied") or () if isinstance(r, Mapping)]
        if policy is not None:
            refs = [r for r in refs if r.get("id") == policy]
        base = {"session_id": session.get("id"), "kind": session.get("kind"),
                "node": session.get("node"), "upstream_id": session.get("upstream_id")}  # fmt: skip
        if not refs:
            if policy is None:
                empty = ("policy", "version", "variant", "status", "seq", "at", "log_status")
                rows.append({**base, **dict.fromkeys(empty)})
            continue
        log = client.session_log(str(session.get("id")))
        now = time.time()
        for ref in refs:
            status, entry = policy_status(
                str(session.get("kind")), log, str(ref.get("id")), int(ref.get("version") or 0),
                now=now, stale_after_s=stale_after_s,
            )  # fmt: skip
            rows.append({
                **base, "policy": ref.get("id"), "version": ref.get("version"),
                "variant": ref.get("variant"), "status": status,
                "seq": None if entry is None else entry.get("seq"),
                "at": None if entry is None else entry.get("at"),
                "log_status": None if entry is None else entry.get("status"),
            })  # fmt: skip
    return rows

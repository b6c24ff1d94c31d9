"""Per-session rollout bookkeeping: which version of each policy a session is on and how far
it got (``pending``, ``sent``, ``acked``, ``unverified``, ``unchanged``, ``skipped``,
``rejected``), kept on ``LiveSession.policy_status`` for rollout status
(controlplane.rollouts.counts) and the ``sessions_at_version`` gauge."""

from __future__ import annotations

from collections.abc import Iterable

from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push
from policies.resolve import Effective

__all__ = ["RUNNING", "live_counts", "mark_policies", "update_policy_status"]

# rollout statuses of a policy version that the session's upstream runs (sessions_at_version):
# acknowledged, nothing to send, or fields the model cannot take; also "unverified" on
# Streaming v3 (sent, or applied as a control-channel app reported: no acknowledgement
# exists). Not pending, sent and unanswered, rejected, or unverified on the Voice Agent API
# (no answer in time, or none attributable).
RUNNING = frozenset({"acked", "unchanged", "skipped"})


def update_policy_status(ls: LiveSession, effective: Effective, pending: bool) -> None:
    """A new resolution of the session: versions no longer in effect are forgotten, new ones
    start ``pending`` (a push follows) or ``unchanged``."""
    statuses, applied = ls.policy_status, effective.applied
    if len(statuses) == 1 and len(applied) == 1:  # the common case, without a set
        if applied[0].id not in statuses:
            statuses.clear()
    elif statuses:
        current = {ref.id for ref in applied}
        for policy_id in [p for p in statuses if p not in current]:
            del statuses[policy_id]
    status = "pending" if pending else "unchanged"
    for ref in applied:
        old = statuses.get(ref.id)
        if old is not None and old[0] == ref.version and old[1] == ref.variant:
            if pending and old[2] != "pending":
                ls.prior_status[ref.id] = old[2]  # restored if the push is refused
                statuses[ref.id] = (ref.version, ref.variant, "pending")
            continue
        statuses[ref.id] = (ref.version, ref.variant, status)
        if ls.prior_status:
            ls.prior_status.pop(ref.id, None)  # another version: nothing to restore
    if ls.prior_status:  # stashes of versions no longer in effect go
        for policy_id in [p for p, _ in ls.prior_status.items() if p not in statuses]:
            del ls.prior_status[policy_id]


def mark_policies(ls: LiveSession, push: Push, status: str, refused: tuple[str, ...] = ()) -> None:
    """The rollout status of the push's policy versions. A refusal (or a quarantined value
    held back) counts only against the policy versions owning the refused fields; the
    others of a rejected push are pending again when the rest is queued, else back to
    what they were before the push (their values did not change)."""
    statuses, blocked = ls.policy_status, push.held + refused
    owners = {push.owners[f].id for f in blocked if f in push.owners} if blocked else ()
    for ref in push.refs:
        current = statuses.get(ref.id)
        if current is None or current[0] != ref.version:
            continue
        if ref.id in owners:
            mark = "rejected"
        elif status != "rejected":
            mark = status
        elif ls.push.state == "pending":
            mark = "pending"  # the rest of the refused push is queued again
        else:
            mark = ls.prior_status.get(ref.id, "unchanged")
        statuses[ref.id] = (ref.version, ref.variant, mark)
        if mark != "pending":
            ls.prior_status.pop(ref.id, None)


def live_counts(
    live: Iterable[LiveSession],
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Live sessions by (kind, state), and by (policy id, version) they run."""
    counts: dict[tuple[str, str], int] = {}
    versions: dict[tuple[str, str], int] = {}
    for ls in live:
        s = ls.session
        key = (s.kind, s.state)  # (a StrEnum: equal to its value, and as cheap to hash)
        counts[key] = counts.get(key, 0) + 1
        acknowledging = s.kind == "voice-agent-v1"  # the dialect, not the socket
        for policy_id, (number, _, status) in ls.policy_status.items():
            if status in RUNNING or (status == "unverified" and not acknowledging):
                vkey = (policy_id, str(number))
                versions[vkey] = versions.get(vkey, 0) + 1
    return counts, versions

"""Exposures, the experiment summary and its sample-ratio-mismatch check (docs/experiments.md).

:class:`ExperimentBook` is fed by the push engine's ``on_record`` hook: every version-log entry
of a session (but a client's own update) names the policy versions in effect and says whether
the session now *runs* that configuration (``exposes``: ``sent`` on a Streaming v3 gateway
session, ``acked`` / an app's ``applied``, an ``unchanged`` entry, a connect already on the
values). The first such entry naming an experiment's variant exposes the session to it,
once per (session, experiment key, iteration), unless the push holds back a value of that
policy (``PushState.held``: quarantined, the upstream refused it); a later running entry
that no longer names the experiment's policy sets ``left_at`` on its row, exposed or only
assigned (cleared if the session comes back). Rows go to the
:class:`sessions.exposures.ExposureStore` in batches from a flush task, like the registry
sync: the fan-out only touches a dict per session that has experiment refs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from controlplane.errors import NotFound
from controlplane.intake.bus import rfc3339
from controlplane.intake.store import PolicyRecord
from controlplane.metrics import Metrics
from controlplane.push.live import LiveSession
from controlplane.rollouts.srm import SRM_THRESHOLD, srm_check
from policies.model import Policy
from policies.provenance import PolicyRef
from policies.sections import Variant
from sessions.clock import Clock
from sessions.exposures import BIN_S, Exposure, ExposureStore

__all__ = [
    "EXPORT_COLUMNS",
    "FLUSH_INTERVAL_S",
    "MAX_BINS",
    "ExperimentBook",
    "export_row",
    "merge_exposures",
    "timeline_body",
]

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S: Final = 0.5
MAX_BINS: Final = 720  # the timeline's bins at most (a wider span gets wider bins)


class ExperimentBook:
    def __init__(
        self,
        store: ExposureStore,
        *,
        clock: Clock,
        metrics: Metrics,
        policy: Callable[[str], Policy | None],
        min_exposures: int,
        live: Mapping[str, LiveSession],
        tail: Callable[[str], tuple[int, str] | None],
        history: Callable[[str], Sequence[PolicyRecord]] | None = None,
    ) -> None:
        self.store = store
        self._sessions = live  # the engine's live sessions (for upstream ids)
        self._tail = tail  # the version log's last entry of a session: the one just appended
        self._clock = clock
        self._metrics = metrics
        self._policy = policy  # the active policy of an id
        self._history = history  # every stored version of an id (NotFound: none)
        self.min_exposures = min_exposures
        # live sessions' rows: session id -> (experiment key, iteration) -> row
        self._live: dict[str, dict[tuple[str, int], Exposure]] = {}
        self._changed: dict[tuple[str, int, str], Exposure] = {}
        self._exposed: list[Exposure] = []
        self._task: asyncio.Task[None] | None = None
        self._plain: tuple[PolicyRef, ...] | None = None  # the last refs naming no variant
        # exposures of sessions whose upstream session has not started yet (a gateway
        # Streaming v3 connect before Begin): session id -> row key -> (at, seq, hash, ref);
        # made when it starts, dropped when it ends first (the upstream refused the connect)
        self._pending: dict[str, dict[tuple[str, int], tuple[float, Any, Any, PolicyRef]]] = {}

    async def start(self) -> None:
        await self.store.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="exposures")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()
        await self.store.close()

    # -- the engine's hook (synchronous, never awaits) -------------------------------------
    def observe(self, ls: LiveSession, refs: tuple[PolicyRef, ...], exposes: bool) -> None:
        sid = ls.session.id
        rows = self._live.get(sid)
        if rows is None:  # the fan-out's common case: no experiment here, none before
            if refs is self._plain:  # (a fan-out's sessions share one refs tuple)
                return
            if not any(ref.variant is not None for ref in refs):
                self._plain = refs
                return
        now = self._clock.now()
        if rows is None:
            rows = self._live[sid] = {}
        started = _started(ls)
        if started and sid in self._pending:
            self._settle(ls, rows)  # (its connect's exposure comes first)
        named: set[str] = set()
        # a policy whose value the push holds back (quarantined: the upstream refused it) is
        # not running on this session: no exposure to its variant from this entry
        held = ls.push.held if exposes else ()
        owners = ls.push.desired_owners
        withheld = {owners[name].id for name in held if name in owners}
        for ref in refs:
            if ref.variant is None:
                continue
            policy = self._version(ref)
            exp = None if policy is None else policy.experiment
            if exp is None:
                continue
            named.add(ref.id)
            row = rows.get((exp.key, exp.iteration))
            if row is None:
                s = ls.session
                row = rows[(exp.key, exp.iteration)] = Exposure(
                    experiment=exp.key, iteration=exp.iteration, session_id=sid,
                    variant=ref.variant, policy=ref.id, version=ref.version,
                    digest=ref.digest, first_assigned_at=now,
                    upstream_session_id=s.upstream_id, kind=s.kind, model=s.model,
                    labels=s.labels,  # (replaced on a relabel, never changed in place)
                    call_id=s.bucket_key,  # (a resumed session: its call's first session)
                )  # fmt: skip
                self._changed[row.key] = row
            elif row.exposed_at is None and row.left_at is not None:
                row.left_at = row.left_seq = None  # assigned again (never exposed yet)
                self._changed[row.key] = row
            if not exposes or ref.id in withheld:
                continue
            if row.exposed_at is None and _overridden(ls, refs, ref, exp.variants):
                continue  # another policy's value (a lock) runs in its variant's place
            if row.exposed_at is None and not started:
                pending = self._pending.setdefault(sid, {})
                if row.key[:2] not in pending:
                    seq, entry_hash = self._tail(sid) or (None, None)
                    pending[row.key[:2]] = (now, seq, entry_hash, ref)
                continue
            if row.exposed_at is None:
                row.exposed_at = now
                row.exposed_seq, row.exposed_hash = self._tail(sid) or (None, None)
                row.variant, row.policy, row.version = ref.variant, ref.id, ref.version
                row.digest = ref.digest
                self._changed[row.key] = row
                self._exposed.append(row)
            elif row.left_at is not None:
                row.left_at = row.left_seq = None  # back in again: the first exposure stands
                self._changed[row.key] = row
        if exposes:
            for row in rows.values():
                if row.left_at is None and row.policy not in named:  # (exposed or only assigned)
                    row.left_at = now
                    tail = self._tail(sid)
                    row.left_seq = None if tail is None else tail[0]
                    self._changed[row.key] = row

    def _version(self, ref: PolicyRef) -> Policy | None:
        """The policy version an entry names: the active one, else (an answer to a push of
        an earlier version, e.g. acknowledged after the experiment was stopped) its stored
        version, so the session that ran it is exposed to what it ran."""
        active = self._policy(ref.id)
        if (active is not None and active.version == ref.version) or self._history is None:
            return active
        try:
            records = self._history(ref.id)
        except NotFound:
            return None
        for record in reversed(records):
            if record.policy.version == ref.version:
                return record.policy
        return None

    def _settle(self, ls: LiveSession, rows: dict[tuple[str, int], Exposure]) -> None:
        """The session's upstream session started: its pending exposures are made, each as
        of the entry that ran its variant."""
        for key, (at, seq, entry_hash, ref) in self._pending.pop(ls.session.id, {}).items():
            row = rows.get(key)
            if row is None or row.exposed_at is not None:
                continue
            row.exposed_at, row.exposed_seq, row.exposed_hash = at, seq, entry_hash
            row.variant, row.policy, row.version = ref.variant or row.variant, ref.id, ref.version
            row.digest = ref.digest
            self._changed[row.key] = row
            self._exposed.append(row)

    def ended(self, ls: LiveSession) -> None:
        """The session ended: its rows stay in the store, with the upstream id if now known.
        A pending exposure is made if its upstream session started, else dropped (it never
        ran: the upstream refused the connect)."""
        if ls.session.id in self._pending:
            if _started(ls):
                self._settle(ls, self._live.get(ls.session.id, {}))
            else:
                del self._pending[ls.session.id]
        rows = self._live.pop(ls.session.id, None)
        now = self._clock.now()
        for row in (rows or {}).values():
            if ls.session.upstream_id is not None:
                row.upstream_session_id = ls.session.upstream_id
            row.ended_at = now
            self._changed[row.key] = row

    # -- batched writes ----------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except Exception as exc:  # kept and retried on the next flush
                log.warning("exposure flush failed; retrying: %s", exc)

    async def flush(self) -> None:
        for sid in [s for s in self._pending if s in self._sessions]:
            waiting = self._sessions[sid]
            if _started(waiting):
                self._settle(waiting, self._live.get(sid, {}))
        if not self._changed and not self._exposed:
            return
        changed, exposed = self._changed, self._exposed
        self._changed, self._exposed = {}, []
        for row in changed.values():  # the upstream id arrives after the connect (Begin)
            if row.upstream_session_id is None:
                ls = self._sessions.get(row.session_id)
                if ls is not None:
                    row.upstream_session_id = ls.session.upstream_id
        try:
            counted = await self.store.save(list(changed.values()), exposed)
        except BaseException:
            for key, row in changed.items():
                self._changed.setdefault(key, row)
            self._exposed[:0] = exposed
            raise
        counts: dict[tuple[str, str], int] = {}
        for row in counted:  # (a resumed session of a counted call: not again)
            ckey = (row.experiment, row.variant)
            counts[ckey] = counts.get(ckey, 0) + 1
        for (experiment, variant), n in counts.items():
            self._metrics.experiment_exposures.labels(experiment, variant).inc(n)

    # -- answers -----------------------------------------------------------------------
    async def summary(self, policy: Policy) -> dict[str, Any]:
        exp = policy.experiment
        assert exp is not None
        await self.flush()
        counts = await self.store.counts(exp.key, exp.iteration)
        # a variant this version no longer declares (renamed or removed mid-iteration) keeps
        # its exposures: listed with weight 0 (the split is broken: the SRM check says so)
        gone = sorted(set(counts) - {v.name for v in exp.variants})
        names = [v.name for v in exp.variants] + gone
        observed = [counts.get(name, 0) for name in names]
        shares = [float(v.weight) / 100 for v in exp.variants] + [0.0] * len(gone)
        weights = [float(v.weight) for v in exp.variants] + [0.0] * len(gone)
        total = sum(observed)
        srm = srm_check(observed, shares, min_exposures=self.min_exposures,
                        threshold=SRM_THRESHOLD)  # fmt: skip
        self._metrics.experiment_srm_p_value.labels(exp.key).set(srm.p_value)
        variants = [
            {
                "name": name,
                "weight": weight,
                "expected_share": share,
                "exposed": n,
                "exposed_share": (n / total) if total else 0.0,
                "expected_exposed": total * share,
                **({"removed": True} if name in gone else {}),
            }
            for name, weight, share, n in zip(names, weights, shares, observed, strict=True)
        ]
        return {
            "experiment": exp.key, "iteration": exp.iteration, "policy": policy.id,
            "version": policy.version, "digest": policy.digest, "bucket_by": exp.bucket_by,
            "exposed": total, "variants": variants, "srm": srm.document(),
        }  # fmt: skip

    async def exposures(self, key: str) -> dict[tuple[int, str], Exposure]:
        await self.flush()
        return {(r.iteration, r.session_id): r for r in await self.store.rows(key)}

    async def timeline(self, policy: Policy) -> dict[str, Any]:
        """The current iteration's counted exposures over time, per variant: the store's
        histogram (the same increments as the summary's counts), at most ``MAX_BINS`` bins."""
        exp = policy.experiment
        assert exp is not None
        await self.flush()
        counts = await self.store.counts(exp.key, exp.iteration)
        bins = await self.store.timeline(exp.key, exp.iteration)
        names = [v.name for v in exp.variants]
        names += sorted((set(counts) | set(bins)) - set(names))
        return {"experiment": exp.key, "iteration": exp.iteration, "policy": policy.id,
                "version": policy.version, **timeline_body(names, counts, bins)}  # fmt: skip


def timeline_body(
    names: Sequence[str], counts: Mapping[str, int], bins: Mapping[str, Mapping[int, int]]
) -> dict[str, Any]:
    """``bin_s``, ``exposed`` (the counts, as the summary's), ``binned`` (what the bins hold:
    less only for exposures counted before the store kept bins), per variant the same three
    and its first/last bin, and ``bins``: ``{"at", "variant", "exposed", "cumulative"}`` per
    non-empty (bin, variant), by time then variant (``at``: the bin's start)."""
    starts = [t for per in bins.values() for t in per]
    bin_s = BIN_S
    if starts:
        span = (max(starts) - min(starts)) // BIN_S + 1
        bin_s = BIN_S * -(-span // MAX_BINS)  # (ceil: at most MAX_BINS bins)
    t0 = min(starts) if starts else 0
    variants, rows = [], []
    for name in names:
        merged: dict[int, int] = {}
        for t, n in (bins.get(name) or {}).items():
            start = t0 + (t - t0) // bin_s * bin_s
            merged[start] = merged.get(start, 0) + n
        total = 0
        for start in sorted(merged):
            total += merged[start]
            rows.append({"at": rfc3339(start), "variant": name, "exposed": merged[start],
                         "cumulative": total})  # fmt: skip
        variants.append({
            "name": name, "exposed": int(counts.get(name, 0)), "binned": total,
            "first": rfc3339(min(merged)) if merged else None,
            "latest": rfc3339(max(merged) + bin_s) if merged else None,
        })  # fmt: skip
    rows.sort(key=lambda r: (r["at"], names.index(r["variant"])))
    return {"bin_s": bin_s, "exposed": sum(v["exposed"] for v in variants),
            "binned": sum(v["binned"] for v in variants), "variants": variants,
            "bins": rows}  # fmt: skip


def _started(ls: LiveSession) -> bool:
    """Whether the session's upstream session runs: always, but for a gateway Streaming v3
    leg (the transport that models the upstream's config) before its ``Begin``
    (``PushState.ready``): an ``Error`` instead refuses the connect, nothing ran."""
    return ls.push.ready or getattr(ls.transport, "model", None) is None


def _overridden(
    ls: LiveSession, refs: tuple[PolicyRef, ...], ref: PolicyRef, variants: Sequence[Variant]
) -> bool:
    """Whether a field the session's variant sets is not in effect from the variant's policy
    (a higher role's lock, or a higher-priority policy, wins it): the session does not run
    its variant's configuration, so it is not exposed to it. Judged on the session's current
    resolution (its provenance) when the entry is about it (``refs`` are the session's
    applied policies); an answer to an earlier push ran what that push carried."""
    variant = next((v for v in variants if v.name == ref.variant), None)
    if variant is None or not variant.set or refs != ls.session.applied:
        return False
    provenance = ls.session.provenance
    for name in variant.set:
        owner = provenance.get(name)
        if owner is None or owner.id != ref.id:
            return True
    return False


# every export row has every column (null when unknown), in this order: the documented ones,
# then the others by name, so CSV pages share one header and JSON rows one set of keys
EXPORT_COLUMNS: Final = (
    "session_id", "policy", "version", "variant", "bucket_by", "bucket_value", "kind", "model",
    "assigned_at", "state", "iteration", "first_assigned_at", "exposed_at", "left_at",
    "upstream_session_id", "labels",
    "assigned_variant", "bucket", "call_id", "counted", "digest", "ended_at", "experiment",
    "exposed_hash", "exposed_seq", "left_seq",
)  # fmt: skip


def export_row(row: Exposure) -> dict[str, Any]:
    """An assignment export row of a session no longer in the experiment (or no longer live)."""

    def at(ts: float | None) -> str | None:
        return None if ts is None else rfc3339(ts)

    return {
        "experiment": row.experiment, "iteration": row.iteration, "session_id": row.session_id,
        "upstream_session_id": row.upstream_session_id, "policy": row.policy,
        "version": row.version, "digest": row.digest, "variant": row.variant,
        "kind": row.kind, "model": row.model, "labels": dict(row.labels),
        "first_assigned_at": at(row.first_assigned_at), "exposed_at": at(row.exposed_at),
        "left_at": at(row.left_at), "ended_at": at(row.ended_at),
        "exposed_seq": row.exposed_seq, "exposed_hash": row.exposed_hash,
        "left_seq": row.left_seq, "call_id": row.call,
        "state": "left" if row.left_at is not None else
                 "ended" if row.ended_at is not None else "live",
    }  # fmt: skip


def merge_exposures(
    rows: list[dict[str, Any]], exposures: Mapping[tuple[int, str], Exposure], policy: Policy
) -> list[dict[str, Any]]:
    """The assignment rows (live and ended sessions, current iteration) with their exposure
    columns, plus a row per exposure no longer among them (left, or an earlier iteration);
    every row with every column of ``EXPORT_COLUMNS``.

    An exposed session is counted in the variant it was first exposed to (the summary's
    counts): its row's ``variant``, ``policy``, ``version`` and ``digest`` are the
    exposure's, the ones its ``exposed_seq`` entry names; ``assigned_variant`` is the variant
    its current assignment gives (different when a weight change moved it since). ``counted``
    is true on the row of its call's first exposure (``call_id``): a resumed session of an
    exposed call has its own exposure row, not counted again. The store decided which
    (``Exposure.counted``): this never re-decides by another rule."""
    exp = policy.experiment
    current = 1 if exp is None else exp.iteration
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        # (an ended session's row keeps the iteration it was assigned in)
        iteration = int(row.get("iteration") or current)
        found = exposures.get((iteration, row["session_id"]))
        extra = export_row(found) if found is not None else {
            "iteration": iteration, "first_assigned_at": row.get("assigned_at"),
            "exposed_at": None, "left_at": None,
        }  # fmt: skip
        merged = {**extra, **row, "iteration": iteration, "assigned_variant": row.get("variant")}
        for name in ("first_assigned_at", "exposed_at", "left_at", "ended_at", "exposed_seq",
                     "exposed_hash", "left_seq"):  # fmt: skip
            merged[name] = extra.get(name)
        if found is not None and found.exposed_at is not None:
            for name in ("variant", "policy", "version", "digest"):
                merged[name] = extra[name]
        merged["counted"] = found is not None and bool(found.counted)
        out[(row["session_id"], iteration)] = merged
    for (it, session_id), found in exposures.items():
        if (session_id, it) not in out:
            # left, ended, or held by another replica (no current assignment known here)
            out[(session_id, it)] = {**export_row(found), "assigned_variant": None,
                                     "counted": bool(found.counted)}  # fmt: skip
    return [_columns(out[k]) for k in sorted(out)]


def _columns(row: dict[str, Any]) -> dict[str, Any]:
    full = {name: row.get(name) for name in EXPORT_COLUMNS}
    if full["labels"] is None:
        full["labels"] = {}
    return full

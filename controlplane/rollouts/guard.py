"""Guarded rollouts (issue #8, docs/policies.md#guard): the decision.

A policy version *breaches* its guard when, over every replica, more than
``max_failure_ratio`` of the sessions it targets failed it within the last ``window_s``
seconds, and it targets at least ``min_sessions``. A failure is a push of that version that
the upstream (or the control-channel app) refused, or that a Voice Agent session did not
acknowledge within the acknowledgement timeout. Streaming v3 cannot acknowledge, so a
streaming push is never a failure for not being acknowledged (nor a success). A timeout
whose answer comes late is retracted while the window still holds it (no halt decided yet):
applied, it was no failure; refused, the refusal counts instead (``RolloutGuard.retract``).

- ``GuardSpec``: a version's effective guard, its ``guard`` block over the deployment's
  ``CONTROLPLANE_GUARD_*`` defaults; ``breached(targeted, failed)`` is the rule.
- ``FailureWindow``: failure times per (policy, version, variant), sans-I/O (times passed in),
  bounded per key, each tagged with its push (session, version) for a retraction. It counts
  SESSIONS: a session that failed several pushes of the version (its own updates re-pushing a
  policy's value, a re-registered id) is one failure while any of them is in the window, so
  the ratio is of sessions and one app cannot multiply its reports
  (docs/security.md#control-channel-v1control).
- ``RolloutGuard``: this replica's one guard task. ``failed(refs)`` counts (never awaits);
  the task checks the versions with failures in their window, at once and then every
  ``check_interval_s`` while any remain (other replicas' counts arrive on their own cadence),
  and asks ``GuardPorts.halt`` once a version breaches. What a halt does is the service's
  business (``controlplane.rollouts.halts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from controlplane.config import Settings
from controlplane.tasks import raise_if_cancelled, stop_task
from policies.model import Policy
from policies.provenance import PolicyRef
from sessions.clock import Clock

__all__ = [
    "MAX_FAILURES_KEPT", "FailureWindow", "GuardPorts", "GuardSpec", "RolloutGuard", "Tag",
]  # fmt: skip

log = logging.getLogger(__name__)

MAX_FAILURES_KEPT: Final = 100_000  # per (policy, version, variant): a bound, not a limit
_BATCH_S: Final = 0.02  # let a burst of failures land before one check reads them all

Key = tuple[str, int, str | None]
# which push failed: (session id, config version); None for a failure nothing may retract
Tag = tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class GuardSpec:
    """The guard a policy version runs under (every field resolved)."""

    enabled: bool
    max_failure_ratio: float
    min_sessions: int
    window_s: float
    on_breach: str  # "halt" | "rollback"

    @classmethod
    def of(cls, policy: Policy, settings: Settings) -> GuardSpec:
        g = policy.guard

        def pick(name: str) -> Any:
            value = None if g is None else getattr(g, name)
            return getattr(settings, "guard_" + name) if value is None else value

        return cls(
            enabled=bool(pick("enabled")),
            max_failure_ratio=float(pick("max_failure_ratio")),
            min_sessions=int(pick("min_sessions")),
            window_s=float(pick("window_s")),
            on_breach=str(pick("on_breach")),
        )

    def breached(self, targeted: int, failed: int) -> bool:
        """More than ``max_failure_ratio`` of at least ``min_sessions`` targeted sessions."""
        return (
            self.enabled
            and targeted >= self.min_sessions
            and failed > self.max_failure_ratio * targeted
        )

    def document(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "max_failure_ratio": self.max_failure_ratio,
                "min_sessions": self.min_sessions, "window_s": self.window_s,
                "on_breach": self.on_breach}  # fmt: skip


class FailureWindow:
    """Monotonic failure times per (policy id, version, variant), each with the ``Tag`` of
    the push that failed: one failure per push (a second one with its tag is not counted), and
    a timeout answered late is retracted (``retract``, O(1)). ``count`` (and the rows) counts
    distinct sessions among the tagged failures, plus each untagged one."""

    def __init__(self, max_kept: int = MAX_FAILURES_KEPT) -> None:
        # key -> entry id -> (time, tag), oldest first; ids index the tagged ones
        self._times: dict[Key, OrderedDict[int, tuple[float, Tag]]] = {}
        self._tagged: dict[tuple[Key, Tag], int] = {}
        # key -> session id -> its failures in the window (a session counts once); untagged
        self._sessions: dict[Key, dict[str, int]] = {}
        self._untagged: dict[Key, int] = {}
        self._ids = itertools.count()
        self._max = max_kept

    def __bool__(self) -> bool:
        return bool(self._times)

    def add(self, ref: PolicyRef, at: float, tag: Tag = None) -> None:
        key = (ref.id, ref.version, ref.variant)
        entries = self._times.get(key)
        if entries is None:
            entries = self._times[key] = OrderedDict()
        elif tag is not None and self._tagged.get((key, tag)) in entries:
            return  # one failure per push: counted already
        entry = next(self._ids)
        entries[entry] = (at, tag)
        if tag is not None:
            self._tagged[(key, tag)] = entry
            sessions = self._sessions.setdefault(key, {})
            sessions[tag[0]] = sessions.get(tag[0], 0) + 1
        else:
            self._untagged[key] = self._untagged.get(key, 0) + 1
        if len(entries) > self._max:
            self._pop_oldest(key, entries)

    def count(self, key: Key) -> int:
        """Failures of ``key`` in the window: distinct sessions, plus untagged failures."""
        return len(self._sessions.get(key, ())) + self._untagged.get(key, 0)

    def _dropped(self, key: Key, tag: Tag) -> None:
        """One failure of ``key`` left the window: its session counts once less."""
        if tag is None:
            left = self._untagged.pop(key, 1) - 1
            if left:
                self._untagged[key] = left
            return
        sessions = self._sessions.get(key, {})
        left = sessions.pop(tag[0], 1) - 1
        if left:
            sessions[tag[0]] = left
        elif not sessions:
            self._sessions.pop(key, None)

    def retract(self, ref: PolicyRef, tag: Tag) -> bool:
        """Forget the failure of ``ref`` tagged ``tag``, if the window still holds it: False
        when it does not (pruned, forgotten at a halt, or never counted)."""
        key = (ref.id, ref.version, ref.variant)
        entry = self._tagged.pop((key, tag), None) if tag is not None else None
        entries = self._times.get(key)
        if entry is None or entries is None or entries.pop(entry, None) is None:
            return False
        self._dropped(key, tag)
        if not entries:
            del self._times[key]
        return True

    def _pop_oldest(self, key: Key, entries: OrderedDict[int, tuple[float, Tag]]) -> None:
        entry, (_, tag) = entries.popitem(last=False)
        self._dropped(key, tag)
        if tag is not None and self._tagged.get((key, tag)) == entry:
            del self._tagged[(key, tag)]

    def versions(self) -> list[tuple[str, int]]:
        return sorted({(pid, version) for pid, version, _ in self._times})

    def prune(self, policy_id: str, version: int, since: float) -> int:
        """Forget failures of that version before ``since``; how many remain."""
        left = 0
        for key in [k for k in self._times if k[0] == policy_id and k[1] == version]:
            entries = self._times[key]
            while entries and next(iter(entries.values()))[0] < since:
                self._pop_oldest(key, entries)
            if entries:
                left += self.count(key)
            else:
                del self._times[key]
        return left

    def forget(self, policy_id: str, keep_version: int | None = None) -> None:
        """Drop the policy's failures (except those of ``keep_version``)."""
        for key in [k for k in self._times if k[0] == policy_id and k[1] != keep_version]:
            entries = self._times.pop(key)
            while entries:
                self._pop_oldest(key, entries)

    def rows(self, only: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Rollout rows (``controlplane.rollouts.counts``) carrying only ``guard_failures``."""
        out: dict[str, list[dict[str, Any]]] = {}
        for key in sorted(self._times, key=lambda k: (k[0], k[1], k[2] or "")):
            pid, version, variant = key
            if only is None or pid == only:
                out.setdefault(pid, []).append(
                    {"version": version, "variant": variant, "guard_failures": self.count(key)}
                )
        return out


class GuardPorts(Protocol):
    """What the guard needs from the service."""

    def guarded(self, policy_id: str) -> tuple[int, GuardSpec] | None:
        """The version to guard now (active, not halted) and its guard; None: nothing."""
        ...

    async def totals(self, policy_id: str, version: int) -> tuple[int, int]:
        """(targeted sessions, failures in the window) of the version over every replica."""
        ...

    async def halt(self, policy_id: str, version: int, detail: dict[str, Any]) -> None:
        """Halt the version (idempotent cluster-wide: a second halt changes nothing)."""
        ...


class RolloutGuard:
    def __init__(self, ports: GuardPorts, *, clock: Clock, check_interval_s: float) -> None:
        self._ports = ports
        self._clock = clock
        self._interval = check_interval_s
        self.window = FailureWindow()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def failed(self, refs: Iterable[PolicyRef], tag: Tag = None) -> None:
        """Count one failure against each of ``refs`` that is guarded right now (``tag``: the
        push's, for :meth:`retract`)."""
        now = self._clock.monotonic()
        counted = False
        for ref in refs:
            guarded = self._ports.guarded(ref.id)
            if guarded is None or guarded[0] != ref.version or not guarded[1].enabled:
                continue
            self.window.add(ref, now, tag)
            counted = True
        if counted:
            self._wake.set()

    def retract(self, refs: Iterable[PolicyRef], tag: Tag) -> int:
        """A failure counted for the push ``tag`` did not happen after all (a timeout answered
        late): uncounted for each of ``refs`` while its window still holds it. A halt already
        decided stands (its failures were forgotten then). How many were retracted."""
        return sum(self.window.retract(ref, tag) for ref in refs)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rollout-guard")

    async def close(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        while True:
            timeout = self._interval if self.window else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            await asyncio.sleep(_BATCH_S)
            self._wake.clear()
            try:
                await self.check()
            except Exception as exc:  # a backend blip (peers' counts): the next check retries
                raise_if_cancelled()
                log.warning("rollout guard check failed, retrying: %s", exc)

    async def check(self) -> list[tuple[str, int]]:
        """Check every version with failures in its window; the versions it halted."""
        halted = []
        now = self._clock.monotonic()
        for policy_id, version in self.window.versions():
            guarded = self._ports.guarded(policy_id)
            if guarded is None or not guarded[1].enabled:
                self.window.forget(policy_id)
                continue
            if guarded[0] != version:  # superseded (or halted): only the current one counts
                self.window.forget(policy_id, keep_version=guarded[0])
                continue
            spec = guarded[1]
            if not self.window.prune(policy_id, version, now - spec.window_s):
                continue
            targeted, failed = await self._ports.totals(policy_id, version)
            if not spec.breached(targeted, failed):
                continue
            detail = {
                "reason": "failure_ratio",
                "failed": failed,
                "targeted": targeted,
                "ratio": round(failed / targeted, 6),
                **{k: v for k, v in spec.document().items() if k != "enabled"},
            }
            await self._ports.halt(policy_id, version, detail)  # raises: retried next check
            self.window.forget(policy_id)
            halted.append((policy_id, version))
        return halted

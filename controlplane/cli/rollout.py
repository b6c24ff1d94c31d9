"""``policy rollout`` rendering, ``policy rollout --watch`` and ``policy apply --wait``: following
``GET /v1/policies/{id}/rollout/stream`` (watch) or polling ``GET /v1/policies/{id}/rollout``
until a version's sessions are all in a final state.

A session of the policy is *final* for a version when its row counts it ``acknowledged``,
``unverified`` (Streaming v3: written, the protocol has no acknowledgement; or no
acknowledgement in time), ``rejected`` or ``unchanged``; ``pending`` and ``sent`` (written,
acknowledgement awaited) are in flight, and a session still counted under another version has
not been reached yet. Exit codes (docs/cli.md#exit-codes-and-errors): 0 converged, 3 converged
with rejections, 4 halted by the rollout guard, 5 timed out, 6 superseded or retired while
waiting, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, TextIO

from controlplane.cli.http import ApiError, CliError, ControlPlaneClient
from controlplane.cli.output import utc_instant

__all__ = [
    "EXIT_HALTED",
    "EXIT_INTERRUPTED",
    "EXIT_REJECTED",
    "EXIT_SUPERSEDED",
    "EXIT_TIMEOUT",
    "OUTCOME_CODES",
    "ROLLOUT_COLUMNS",
    "Progress",
    "apply_wait",
    "guard_lines",
    "outcome_json",
    "progress",
    "rollout_text",
    "wait_for",
    "watch",
    "wave_lines",
]

EXIT_REJECTED: Final = 3
EXIT_HALTED: Final = 4
EXIT_TIMEOUT: Final = 5
EXIT_SUPERSEDED: Final = 6
EXIT_INTERRUPTED: Final = 130
OUTCOME_CODES: Final = {
    "converged": 0, "rejected": EXIT_REJECTED, "halted": EXIT_HALTED, "timeout": EXIT_TIMEOUT,
    "superseded": EXIT_SUPERSEDED, "interrupted": EXIT_INTERRUPTED,
}  # fmt: skip

# targeted = unchanged + sent + acked + unverified + rejected + pending (docs/api.md)
ROLLOUT_COLUMNS: Final = (
    ("TARGETED", "targeted"), ("UNCHANGED", "unchanged"), ("SENT", "sent"),
    ("ACKED", "acknowledged"), ("UNVERIFIED", "unverified"), ("REJECTED", "rejected"),
    ("PENDING", "pending"), ("FAILURES", "guard_failures"),
)  # fmt: skip
_FINAL: Final = ("acknowledged", "unverified", "unchanged", "rejected")
# a converged view must hold on a later poll at least this long after it was first seen: other
# replicas publish their counts every second (rollout_interval_s), a new version's sessions on
# them can be missing from one answer
CONFIRM_S: Final = 1.5


@dataclass(frozen=True)
class Progress:
    """One version's delivery, summed over variants and replicas; ``outcome`` is None while
    sessions are in flight."""

    policy: str
    version: int
    state: str
    targeted: int
    unchanged: int
    sent: int
    acknowledged: int
    unverified: int
    rejected: int
    pending: int
    elsewhere: int  # sessions of the policy still counted under another version
    outcome: str | None

    @property
    def final(self) -> int:
        return self.acknowledged + self.unverified + self.unchanged + self.rejected

    def line(self) -> str:
        counts = ", ".join(f"{name} {getattr(self, key)}" for name, key in (
            ("acked", "acknowledged"), ("unverified", "unverified"),
            ("unchanged", "unchanged"), ("rejected", "rejected"),
        ))  # fmt: skip
        text = (f"policy {self.policy} version {self.version}: {self.final}/{self.targeted} "
                f"sessions final ({counts}); in flight: pending {self.pending}, sent "
                f"{self.sent}; on other versions: {self.elsewhere}")  # fmt: skip
        return text if self.state in ("active", "") else f"{text} [{self.state}]"


def progress(body: Mapping[str, Any], version: int | None = None) -> Progress:
    """Where ``version`` (default: the policy's current one) stands in a rollout answer."""
    current = int(body.get("version") or 0)
    target = current if version is None else version
    state = str(body.get("state") or body.get("status") or "")
    sums = dict.fromkeys(("targeted", *_FINAL, "sent", "pending"), 0)
    elsewhere = 0
    for row in body.get("versions") or ():
        if int(row.get("version", 0)) == target:
            for key in sums:
                sums[key] += int(row.get(key, 0))
        else:
            elsewhere += int(row.get("targeted", 0))
    halt = body.get("halt")
    outcome: str | None = None
    if isinstance(halt, Mapping) and halt.get("version") == target and state != "active":
        outcome = "halted"  # the guard stopped it (or rolled it back, or retired the policy)
    elif state == "halted" and version is None:
        outcome = "halted"
    elif version is None and state == "retired" and isinstance(halt, Mapping):
        outcome = "halted"  # --watch after the guard halted the version and retired the policy
    elif current != target or (version is not None and "retired" in (state, body.get("status"))):
        outcome = "superseded"
    elif elsewhere == 0 and sums["pending"] == 0 and sums["sent"] == 0:
        outcome = "rejected" if sums["rejected"] else "converged"
    return Progress(str(body.get("id", "?")), target, state, elsewhere=elsewhere,
                    outcome=outcome, **sums)  # fmt: skip


def guard_lines(guard: Any, halt: Any) -> list[str]:
    """The rollout guard in one line, and the halt (if any) in another (docs/cli.md)."""
    lines = []
    if isinstance(guard, dict):
        if guard.get("enabled"):
            lines.append(
                f"guard: more than {guard.get('max_failure_ratio', 0):.2%} failed of at least "
                f"{guard.get('min_sessions')} sessions within {guard.get('window_s', 0):g}s "
                f"-> {guard.get('on_breach')}"
            )
        else:
            lines.append("guard: off")
    if isinstance(halt, dict):
        line = (
            f"HALTED version {halt.get('version')} at {_when(halt.get('at'))}: "
            f"{halt.get('failed')} of {halt.get('targeted')} targeted sessions failed "
            f"({float(halt.get('ratio') or 0):.2%}), decided by {halt.get('decided_by')}"
        )
        if halt.get("rollback_to") is not None:
            line += f"; rolled back to the content of version {halt['rollback_to']}"
        elif halt.get("on_breach") == "rollback":
            line += "; no earlier version: retired"
        lines.append(line)
    return lines


def _when(value: Any) -> str:
    return utc_instant(value) or ("-" if value is None else str(value))


def wave_lines(waves: Any, table: Callable[[Sequence[str], Any], str]) -> list[str]:
    """The progressive waves in one line, and their wave table (docs/cli.md)."""
    if not isinstance(waves, dict):
        return []
    percents = waves.get("waves") or []
    index = int(waves.get("index") or 0)
    line = (
        f"waves: {waves.get('state')} at wave {index + 1} of {len(percents)} "
        f"({waves.get('percent')}%), every {waves.get('wave_interval_s', 0):g}s"
    )
    if waves.get("next_at"):
        line += f", next at {_when(waves.get('next_at'))}"
    if waves.get("previous_version") is not None:
        line += f"; sessions outside the wave run version {waves['previous_version']}"
    rows = [
        (i + 1, p, "current" if i == index else "reached" if i < index else "")
        for i, p in enumerate(percents)
    ]
    return [line, table(("WAVE", "PERCENT", "STATE"), rows).rstrip("\n")]


def rollout_text(r: Mapping[str, Any], table: Callable[[Sequence[str], Any], str]) -> str:
    """The ``policy rollout`` output: a header, the guard and halt lines, rows and totals."""
    rows = [
        (v.get("version"), v.get("variant"), *(v.get(c, 0) for _, c in ROLLOUT_COLUMNS))
        for v in r.get("versions", [])
    ]
    totals = r.get("totals") or {}
    rows.append(("total", "", *(totals.get(c, 0) for _, c in ROLLOUT_COLUMNS)))
    state = r.get("state") or r.get("status", "?")
    lines = [f"policy {r.get('id')} version {r.get('version')} ({state})"]
    lines += guard_lines(r.get("guard"), r.get("halt"))
    lines += wave_lines(r.get("waves"), table)
    headers = ("VERSION", "VARIANT", *(h for h, _ in ROLLOUT_COLUMNS))
    return "\n".join(lines) + "\n" + table(headers, rows)


def _settled(p: Progress, seen: dict[str, float], now: float) -> bool:
    """Whether an outcome is to be believed: a converged view only once confirmed."""
    if p.outcome is None:
        seen.clear()
        return False
    if p.outcome not in ("converged", "rejected"):
        return True
    first = seen.setdefault(p.outcome, now)
    return now - first >= CONFIRM_S


def wait_for(
    client: ControlPlaneClient,
    policy_id: str,
    version: int,
    *,
    timeout_s: float,
    interval_s: float,
    err: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, Progress, dict[str, Any]]:
    """Poll until ``version`` of ``policy_id`` converges, is halted or superseded, or
    ``timeout_s`` passes; progress lines go to ``err`` (stderr) when they change (and every
    10 s). Returns (outcome, last progress, last rollout answer)."""
    out = sys.stderr if err is None else err
    start = clock()
    deadline = start + timeout_s
    seen: dict[str, float] = {}
    last_line, last_at = "", 0.0
    while True:
        now = clock()
        client.timeout_s = max(1.0, min(30.0, deadline - now))
        body = client.rollout_status(policy_id)
        now = clock()
        p = progress(body, version)
        line = p.line()
        if line != last_line or now - last_at >= 10.0:
            print(f"{line} [{now - start:.1f}s]", file=out, flush=True)
            last_line, last_at = line, now
        if _settled(p, seen, now):
            assert p.outcome is not None
            return p.outcome, p, body
        if now >= deadline:
            return "timeout", p, body
        sleep(min(interval_s, max(0.0, deadline - now)))


def watch(
    client: ControlPlaneClient,
    policy_id: str,
    *,
    interval_s: float,
    as_json: bool,
    table: Callable[[Sequence[str], Any], str],
    out: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    use_stream: bool = True,
) -> int:
    """``policy rollout ID --watch``: print the rollout whenever it changes until the current
    version converges (exit 0, or 3 with rejections) or is halted (4); Ctrl-C exits 130.
    Follows ``GET .../rollout/stream`` (docs/api.md#rollout-stream), polling every
    ``interval_s`` when it is refused or ends, and to confirm an outcome.
    On a terminal the table is redrawn in place; ``--json`` prints one line per change."""
    stream = sys.stdout if out is None else out
    tty = not as_json and stream.isatty()
    seen: dict[str, float] = {}
    last: list[dict[str, Any]] = []

    def show(body: dict[str, Any]) -> Progress:
        if not last or body != last[0]:
            last[:] = [body]
            if as_json:
                stream.write(json.dumps(body, separators=(",", ":")) + "\n")
            else:
                text = rollout_text(body, table)
                stream.write(("\x1b[H\x1b[2J" if tty else "") + text + "\n\n")
            stream.flush()
        return progress(body)

    # changes arrive on the rollout stream (server-sent events); an outcome is confirmed by
    # polling (CONFIRM_S later), and when the stream fails or ends, polling takes over
    streaming, p = use_stream, None
    try:
        while True:
            if streaming and (p is None or p.outcome is None):
                try:
                    for body in client.rollout_events(policy_id):
                        p = show(body)
                        if p.outcome is not None:
                            break
                    else:  # the server ended it (draining)
                        print(f"rollout stream ended by the server; polling every "
                              f"{interval_s:g}s", file=sys.stderr)  # fmt: skip
                        streaming = False
                except CliError as exc:
                    if isinstance(exc, ApiError) and exc.status in (401, 403, 404):
                        raise  # polling would be refused the same way: say it once
                    print(f"rollout stream unavailable ({exc}); polling every {interval_s:g}s",
                          file=sys.stderr)  # fmt: skip
                    streaming = False
            p = show(client.rollout_status(policy_id))
            if _settled(p, seen, clock()):
                assert p.outcome is not None
                if not as_json:
                    print(f"{p.outcome}: {p.line()}", file=sys.stderr)
                return OUTCOME_CODES[p.outcome]
            sleep(min(interval_s, CONFIRM_S) if p.outcome is not None else interval_s)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def outcome_json(
    applied: Mapping[str, Any], outcome: str, p: Progress, body: Mapping[str, Any], waited: float
) -> dict[str, Any]:
    """What ``policy apply --wait --json`` prints on stdout."""
    return {"policy": dict(applied), "outcome": outcome, "exit_code": OUTCOME_CODES[outcome],
            "waited_s": round(waited, 3), "progress": asdict(p), "rollout": dict(body)}  # fmt: skip


def apply_wait(
    args: argparse.Namespace, client: ControlPlaneClient, applied: dict[str, Any]
) -> int:
    """``policy apply --wait``: progress on stderr until the version's sessions are final."""
    started = time.monotonic()
    policy_id, version = str(applied.get("id")), int(applied.get("version") or 0)
    try:
        outcome, p, body = wait_for(
            client, policy_id, version, timeout_s=args.timeout or 300.0, interval_s=args.interval
        )
    except KeyboardInterrupt:
        print("interrupted: the version keeps rolling out", file=sys.stderr)
        return EXIT_INTERRUPTED
    waited = time.monotonic() - started
    code = OUTCOME_CODES[outcome]
    if args.as_json:
        print(json.dumps(outcome_json(applied, outcome, p, body, waited), indent=2))
        return code
    done = {
        "converged": f"converged: {p.final} session(s) final in {waited:.1f}s",
        "rejected": f"rejected: {p.rejected} of {p.targeted} session(s) refused version "
        f"{version} (see `controlplane sessions status --policy {policy_id}`)",
        "halted": f"halted: the rollout guard stopped version {version}",
        "timeout": f"timed out after {waited:.1f}s: {p.pending + p.sent} session(s) in flight, "
        f"{p.elsewhere} on other versions (the version keeps rolling out)",
        "superseded": f"superseded: version {version} is no longer the policy's current version "
        f"(now {body.get('version')}, {body.get('state') or body.get('status')})",
    }[outcome]
    print(f"controlplane: {done}", file=sys.stderr)
    return code

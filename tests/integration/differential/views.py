"""One comparable view of a session's configuration, from either side of the differential test.

Both sides are mapped to the *canonical* fields a session's upstream can run, through the
dialect tables (``sessions/dialects/*_table.py``, the ones the emulator itself reads):

- the emulator's ``config`` (protocol field names) → ``emulator_view``;
- the control plane's recorded config (canonical, an absent field meaning "the upstream's
  default") → ``recorded_view``, with every absent field filled by the dialect's
  ``default_for`` (what the control plane itself would send to mean "unset").

A field the session's model cannot take is left out of both (the control plane records it as
``skipped``, never sent). Clearing values (``""``, ``[]``) read as unset, lists as tuples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sessions.config_at import LATE_ANSWER
from sessions.dialects.streaming_v3 import STREAMING_V3
from sessions.dialects.streaming_v3_table import CANONICAL_TO_WIRE as STREAMING_WIRE
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.dialects.voice_agent_v1_table import CANONICAL_TO_WIRE as AGENT_WIRE

__all__ = [
    "View", "agent_doubted", "diff_views", "doubted", "emulator_view", "recorded_view",
    "runnable_fields",
]  # fmt: skip

View = dict[str, Any]
STREAMING = "streaming-v3"
AGENT = "voice-agent-v1"


def runnable_fields(kind: str, model: str) -> list[str]:
    """The canonical fields this session's upstream runs (and so can be compared)."""
    if kind == STREAMING:
        return [f for f in STREAMING_WIRE if STREAMING_V3.skip_reason(f, model) is None]
    return [f for f in AGENT_WIRE if VOICE_AGENT_V1.skip_reason(f) is None]


def _norm(value: Any) -> Any:
    if value is None or value == "" or value == [] or value == ():
        return None
    if isinstance(value, list | tuple):
        return tuple(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _path(doc: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = doc
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def emulator_view(kind: str, model: str, config: Mapping[str, Any] | None) -> View:
    """The canonical view of the emulator's ``config`` (streaming: the flat wire parameters;
    voice agent: the resolved ``session`` object)."""
    config = config or {}
    view: View = {}
    for name in runnable_fields(kind, model):
        if kind == STREAMING:
            raw = config.get(STREAMING_WIRE[name][0])
        else:
            raw = _path(config, AGENT_WIRE[name])
        view[name] = _norm(raw)
    return view


def recorded_view(kind: str, model: str, config: Mapping[str, Any]) -> View:
    """The canonical view of a control-plane config: absent fields are the upstream default."""
    view: View = {}
    for name in runnable_fields(kind, model):
        if name in config and config[name] is not None:
            view[name] = _norm(config[name])
        elif kind == STREAMING:
            view[name] = _norm(STREAMING_V3.default_for(name, model))
        else:
            view[name] = _norm(VOICE_AGENT_V1.default_for(name))
    return view


def diff_views(
    recorded: View, upstream: View, said: set[str] | frozenset[str] = frozenset()
) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ: name → (control plane, emulator); ``said``: fields the
    record says it may have wrong (``doubted``), not counted."""
    return {
        k: (recorded.get(k), upstream.get(k))
        for k in sorted(set(recorded) | set(upstream))
        if recorded.get(k) != upstream.get(k) and k not in said
    }


def doubted(log: list[Mapping[str, Any]], at: float | None = None) -> set[str]:
    """The fields the record says it may have wrong at ``at`` (default: now): a Streaming v3
    ``Warning`` no update explains (an ``upstream`` ``unverified`` entry) names the fields in
    doubt (``in doubt: a, b``: every field an update had set on the connection), each until a
    later entry sets it again (the protocol cannot say which update the upstream did not
    apply; docs/audit.md). A mismatch on any other field is the record being silently wrong
    (the session view's ``in_doubt`` says the same for the present: ``check_view``)."""
    doubt: set[str] = set()
    for entry in log:
        if at is not None and float(entry["at"]) > at:
            break
        if entry["cause"] == "upstream":
            named = str(entry.get("error") or "").rpartition("in doubt: ")[2]
            doubt = set() if named.startswith("none") else set(named.split(", "))
        elif entry["status"] in ("sent", "acked", "skipped") or (
            entry["status"] == "unverified" and not entry.get("error")
        ):
            doubt.difference_update(entry.get("delta") or {})
    return doubt


def agent_doubted(log: list[Mapping[str, Any]], at: float | None = None) -> set[str]:
    """The fields the record says it may have wrong at ``at`` (default: now) on an
    acknowledging session: a push that ended ``unverified`` with no answer (its acknowledgement
    timed out, or the session ended first, its frame already handed to the socket: in doubt,
    docs/audit.md) leaves the fields it carried unknown (``config-at`` lists it in ``doubts``)
    until its late answer, or a later acknowledged entry setting them. A mismatch on any other
    field is the record being silently wrong."""
    pending: dict[Any, set[str]] = {}  # push version -> its fields, in doubt
    for entry in log:
        if at is not None and float(entry["at"]) > at:
            break
        status, error = entry["status"], str(entry.get("error") or "")
        fields = set(entry.get("delta") or {})
        # a push of any cause (policy, relabel, rollback, retire, a reconnect's connect v2+)
        push = entry["cause"] not in ("client", "upstream") and (
            entry["cause"] != "connect" or entry["version"] != 1
        )
        if push and status == "unverified" and error and not (error.startswith(LATE_ANSWER)):
            pending[entry["version"]] = fields
            continue
        if push and status != "sent":
            pending.pop(entry["version"], None)  # (its late answer)
        if status == "acked" or (status == "unverified" and not error):
            for doubt in pending.values():
                doubt.difference_update(fields)
    return set().union(*pending.values()) if pending else set()

"""One control-channel session as a sans-I/O machine: the app's frames in, actions out.

:class:`ControlSession` makes the protocol decisions of ``/v1/control`` after registration
(docs/control-channel.md); ``controlplane.edges.control_channel`` reads the socket and
executes the actions (``controlplane.push.actions``) in order. A frame that breaks the
protocol gets an ``error`` frame (the socket stays open) and changes nothing. Also here: the
pure parsing of frames and of the ``register`` message.
"""

from __future__ import annotations

import json
import re
from typing import Any

from controlplane.api.inputs import parse_frame
from controlplane.edges.admission import UpdateRates
from controlplane.labels import MAX_LABELS
from controlplane.push.acks import ClientRefusal, ClientUpdate, PushAck, PushApplied, PushRejected
from controlplane.push.actions import (
    Acknowledge,
    Action,
    ClientChange,
    Count,
    LateAnswer,
    ToClient,
)
from controlplane.push.actions import TurnBoundary as TurnBoundaryAction
from controlplane.push.live import LiveSession
from policies.errors import PolicyValidationError
from policies.fields import FIELD_NAMES, Config, Delta, check_value
from sessions.model import SESSION_KINDS

__all__ = ["ID_MAX", "ControlSession", "ProtocolError", "decode", "error_frame", "registration"]

ID_MAX = 128
# what the REST API can address: no whitespace, '/' or control characters (docs/api.md)
_SESSION_ID = re.compile(rf"[^\s/\x00-\x1f\x7f]{{1,{ID_MAX}}}")


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ControlSession:
    """A registered control-channel session (see the module docstring)."""

    __slots__ = ("ls", "rates")

    def __init__(self, ls: LiveSession, rates: UpdateRates) -> None:
        self.ls = ls
        self.rates = rates

    def text(self, data: str, wall: float) -> list[Action]:
        """One text frame from the app (``wall``: the time a ``heartbeat`` answers with)."""
        try:
            return self._message(decode(data), wall)
        except ProtocolError as exc:
            return [ToClient(error_frame(exc.code, exc.message), quiet=True)]

    def not_text(self) -> list[Action]:
        return [ToClient(error_frame("invalid_frame", "only JSON text frames are accepted"), True)]

    def _message(self, raw: dict[str, Any], wall: float) -> list[Action]:
        ls = self.ls
        kind = raw.get("type")
        named = raw.get("session_id")
        if named is not None and named != ls.session.id:
            raise ProtocolError(
                "not_your_session",
                "this connection registered session "
                f"{ls.session.id!r}; it may report only about that session",
            )
        if kind == "heartbeat":
            return [ToClient(json.dumps({"type": "heartbeat", "at": wall}))]
        if kind in ("applied", "failed"):
            return [self._report(kind, raw)]
        if kind == "turn_boundary":
            return [TurnBoundaryAction()]
        if kind == "update":
            return self._update(raw.get("config"))
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}")

    def _report(self, kind: str, raw: dict[str, Any]) -> Acknowledge | LateAnswer:
        """``applied`` / ``failed``: about the push in flight; about the last push that ended
        without a report in time (the acknowledgement timeout), a late answer, recorded as
        one more entry (docs/audit.md, "Late answers"); else refused."""
        version = raw.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ProtocolError("bad_version", f"{kind}.version must be an integer")
        state = self.ls.push
        in_flight, late = state.in_flight, state.unanswered
        if in_flight is not None and in_flight.version == version:
            return Acknowledge(self._ack(kind, raw))
        if late is not None and late.version == version:
            return LateAnswer(late, self._ack(kind, raw))
        raise ProtocolError("unknown_version", f"version {version} is not awaiting a report")

    def _ack(self, kind: str, raw: dict[str, Any]) -> PushAck:
        if kind == "applied":  # Streaming v3 has no acknowledgement: applied, never acked
            return PushApplied(
                "acked" if self.ls.session.kind == "voice-agent-v1" else "unverified"
            )
        error = str(raw.get("error", "failed"))[:500]
        return PushRejected("app_failed", error, _refused_fields(raw.get("fields")))

    def _update(self, raw: Any) -> list[Action]:
        """The app's own change: locked fields and invalid values refused, the rest adopted
        and logged in one report, the app told which is which."""
        if not isinstance(raw, dict):
            raise ProtocolError("bad_config", "update.config must be an object")
        ls = self.ls
        if not self.rates.allow(ls.session.id):  # dropped, not logged
            problem = self.rates.problem()
            return [Count("rate_limited"), ToClient(error_frame("rate_limited", problem), True)]
        delta: Delta = {}
        rejected: dict[str, str] = {}
        for name, value in raw.items():
            if name in ls.locks:
                ref = ls.locks[name]
                rejected[name] = f"locked by policy {ref.id} v{ref.version}"
                continue
            if value is None:
                delta[name] = None
                continue
            normalised, problems = check_value(name, value, f"config.{name}")
            if problems:
                rejected[name] = problems[0].message
            else:
                delta[name] = normalised
        wire = {"type": "update", "config": raw}
        refusal = None
        if rejected:
            locked = {k: raw[k] for k in rejected if k in raw and k in ls.locks}
            error = "; ".join(f"{k}: {v}" for k, v in rejected.items())
            refusal = ClientRefusal(locked, wire, error, counted=None)
        result = {"type": "update_result", "accepted": sorted(delta), "rejected": rejected}
        return [
            ClientChange(ClientUpdate("sent", delta, wire, refusal=refusal)),
            ToClient(json.dumps(result)),
        ]


def decode(data: str) -> dict[str, Any]:
    """A frame's JSON object under the REST body rules, else :class:`ProtocolError`."""
    try:
        raw = parse_frame(data)
    except ValueError as exc:
        raise ProtocolError("bad_json", str(exc)) from None
    if not isinstance(raw, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object")
    return raw


def error_frame(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})


def registration(raw: dict[str, Any]) -> tuple[str, str, dict[str, str], Config, str | None]:
    """A ``register`` message's kind, model, labels, config and chosen session id."""
    kind = raw.get("kind")
    if kind not in SESSION_KINDS:
        raise ProtocolError("bad_kind", f"kind must be one of {', '.join(SESSION_KINDS)}")
    model = raw.get("model")
    if not isinstance(model, str) or not model or len(model) > ID_MAX:
        raise ProtocolError("bad_model", f"model must be a non-empty string ≤ {ID_MAX} chars")
    session_id = raw.get("session_id")
    if session_id is not None and (
        not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id)
    ):
        raise ProtocolError(
            "bad_session_id",
            f"session_id must be 1-{ID_MAX} characters without whitespace, '/' or control "
            "characters",
        )
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 63 and len(v) <= 256
        for k, v in labels.items()
    ):
        raise ProtocolError("bad_labels", "labels must map strings (≤63) to strings (≤256)")
    if len(labels) > MAX_LABELS:  # as on the gateway
        raise ProtocolError("bad_labels", f"{len(labels)} labels, limit is {MAX_LABELS}")
    config_raw = raw.get("config") or {}
    if not isinstance(config_raw, dict):
        raise ProtocolError("bad_config", "config must be an object of canonical fields")
    config: Config = {}
    for name, value in config_raw.items():
        normalised, problems = check_value(name, value, f"config.{name}")
        if problems:
            raise ProtocolError("bad_config", str(PolicyValidationError(problems)))
        config[name] = normalised
    return kind, model, dict(labels), config, session_id


def _refused_fields(raw: Any) -> frozenset[str] | None:
    """``failed.fields``: the canonical fields the app's upstream refused (quarantined for
    the session); absent or empty: every field of the push."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(f, str) for f in raw):
        raise ProtocolError("bad_fields", "failed.fields must be a list of canonical field names")
    unknown = sorted(set(raw) - FIELD_NAMES)
    if unknown:
        raise ProtocolError(
            "bad_fields",
            f"failed.fields: unknown field(s) {', '.join(unknown)[:200]} (known: "
            f"{', '.join(sorted(FIELD_NAMES))})",
        )
    return frozenset(raw) or None

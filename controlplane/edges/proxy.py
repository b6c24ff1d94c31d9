"""One gateway session as a sans-I/O proxy machine: frames and pushes in, actions out.

:class:`ProxySession` makes every protocol decision of a proxied session; the pump
(``controlplane.edges.gateway_pump``) only turns socket events into its methods and executes
the actions they return (``controlplane.push.actions``), in order. Events:

- ``client_text``: a client text frame. Parsed under the REST body rules
  (``controlplane.api.inputs.parse_frame``); text that is not JSON goes upstream untouched
  (the upstream answers it); JSON that cannot be recorded faithfully (duplicate key, ``NaN``,
  lone surrogate, too deep) is refused the upstream's way: Streaming v3 ``Error`` and close
  3006, Voice Agent ``session.error`` ``invalid_format`` (the session stays open). A client
  update over the session's rate is dropped (close 4429 on Streaming v3, ``rate_limited``
  on the Voice Agent API). An update is forwarded without the fields locked by an applying
  policy (refused and logged; Voice Agent: ``session.error`` ``immutable_field``; Streaming
  v3: judged on its effect by the upstream's own config model, the client gets a
  ``Warning``). A malformed update goes upstream for it to judge, but never with a locked
  field.
- after the upstream refused the first message (no upstream session), a client
  ``session.update`` is a new connect (``Reconnect``; ``reconnected`` sends it).
- ``upstream_text``: an upstream text frame, forwarded to the client except the Voice Agent
  answers to our own pushes (``controlplane.push.agent_acks`` attributes them);
  readiness and turn boundaries are reported to the service.
- ``push``: the push engine writes one of our pushes. After the client's Streaming v3
  ``Terminate`` went upstream, the upstream runs nothing more (it answers ``Termination`` and
  closes): a push is refused (``ConnectionError``: the engine records it ``rejected`` "write
  failed", never running), and later client frames go upstream unrecorded.
- ``on_timer``: an update's acknowledgement deadline passed (Voice Agent).
- ``close``: the session ended.

Audio (binary frames) never reaches the machine: the pump relays it untouched.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from controlplane.api.inputs import FrameNotJson, UnsafeFrame, parse_frame
from controlplane.edges.admission import RATE_LIMIT_CLOSE, UpdateRates
from controlplane.push.acks import ClientRefusal, ClientUpdate, PushRejected
from controlplane.push.actions import (
    Action,
    ClientChange,
    CloseClient,
    ConnectAnswer,
    Count,
    Kick,
    Ready,
    Reconnect,
    ToClient,
    ToUpstream,
    TurnBoundary,
)
from controlplane.push.agent_acks import AgentAcks
from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push
from policies.fields import Delta
from policies.provenance import PolicyRef
from sessions.dialects import base
from sessions.dialects.base import Dialect, ordered_fields
from sessions.dialects.streaming_v3 import UPDATE_TYPE as STREAMING_UPDATE
from sessions.dialects.streaming_v3_table import CANONICAL_TO_WIRE as STREAMING_WIRE
from sessions.dialects.streaming_v3_table import CLOSE as STREAMING_CLOSE
from sessions.dialects.streaming_v3_upstream import StreamingUpstream
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.errors import DialectError

__all__ = ["RESUME_AFTER_REFUSAL", "TERMINATED", "ProxySession", "agent_error"]

log = logging.getLogger(__name__)

INVALID_MESSAGE = STREAMING_CLOSE["invalid_message"]  # an Error about a message (3006)

RESUME_AFTER_REFUSAL = (
    "session.resume after a refused first message is not supported through the control "
    "plane: send a session.update, or resume on a new connection"
)


TERMINATED = (
    "the client ended the session (Terminate went upstream): the upstream applies no more updates"
)


class ProxySession:
    """One proxied session (see the module docstring). ``streaming``: the Streaming v3
    upstream's config model; ``acks``: the Voice Agent leg (one update outstanding)."""

    __slots__ = (
        "acks", "carried", "connect_refs", "dialect", "doubt", "ls", "rates", "streaming",
        "terminated",
    )  # fmt: skip

    def __init__(
        self,
        ls: LiveSession,
        *,
        rates: UpdateRates,
        streaming: StreamingUpstream | None = None,
        acks: AgentAcks | None = None,
    ) -> None:
        self.ls = ls
        self.dialect: Dialect = ls.dialect
        self.rates = rates
        self.streaming = streaming
        self.acks = acks
        self.terminated = False  # Streaming v3: the client's Terminate went upstream
        self.connect_refs = ls.session.applied  # the policy versions the connect carries
        # Streaming v3: the canonical fields an update (ours or the client's) has set on this
        # connection, and those in doubt (``_doubt``: set by an unpredicted Warning, each
        # ended by a later update setting it)
        self.carried: set[str] = set()
        self.doubt: set[str] = set()

    # -- the client's frames -----------------------------------------------------------------
    def client_text(self, data: str, now: float) -> list[Action]:
        try:
            message = parse_frame(data)
        except FrameNotJson:
            message = None  # not JSON: forwarded untouched, the upstream answers it
        except UnsafeFrame as exc:
            return self._refuse(str(exc))
        acks = self.acks
        if not isinstance(message, dict):
            return [ToUpstream(data)] if acks is None else acks.client_other(data)
        if self.terminated:  # the upstream ends the session: nothing it gets now runs
            return [ToUpstream(data)]
        if self.streaming is not None and message.get("type") == "Terminate":
            self.terminated = True
            return [ToUpstream(data)]
        if acks is not None and acks.refused and message.get("type") == "session.update":
            # the upstream refused the first message and takes this one as a first: a new
            # connect, the policies' values merged in (as into the first; no lock refusal)
            return self._over_rate() or [Reconnect(message)]
        if acks is not None and acks.refused and message.get("type") == "session.resume":
            # (the record could not follow a resumed session's config here: refused, the
            # session stays open for a session.update)
            return [Count("invalid_frame"), ToClient(agent_error("invalid_format",
                    RESUME_AFTER_REFUSAL), quiet=True)]  # fmt: skip
        if self.streaming is not None and message.get("type") == STREAMING_UPDATE:
            return self._over_rate() or self._streaming_update(self.streaming, message, data)
        try:
            delta = self.dialect.parse_client_update(message)
        except DialectError as exc:  # a malformed value: the upstream judges it, locks hold
            return self._over_rate() or self._forward(
                message, data, sorted(self.ls.locks), now, note=f" (malformed update: {exc})"
            )
        if delta is None:  # not an update: untouched (upstream judges it)
            if acks is None or message.get("type") == "input.audio":
                return [ToUpstream(data)]
            return acks.client_other(data)
        locked = sorted(set(delta) & set(self.ls.locks))
        return self._over_rate() or self._forward(message, data, locked, now, delta=delta)

    def _forward(
        self,
        message: dict[str, Any],
        data: str,
        locked: list[str],
        now: float,
        *,
        delta: Delta | None = None,
        note: str = "",
    ) -> list[Action]:
        """An update without the ``locked`` fields it carries (each refusal logged and
        counted; the Voice Agent client learns why, in its own protocol); ``delta``: its
        canonical delta (None: malformed, logged only when the upstream answers it)."""
        actions: list[Action] = []
        stripped: tuple[str, ...] = ()
        forward: dict[str, Any] | None = message
        if locked:
            stripped_msg, stripped = self.dialect.strip_locked(message, locked)
            if stripped:
                forward = stripped_msg
                refused = {k: delta[k] for k in stripped} if delta is not None else {}
                refusal = ClientRefusal(refused, message, self._owners(stripped) + note)
                actions.append(ClientChange(ClientUpdate("sent", {}, None, refusal=refusal)))
                if self.dialect.acknowledges:
                    actions.append(ToClient(_locked_error(self.ls, stripped), quiet=True))
        if forward is None:
            return actions
        text = data if not stripped else json.dumps(forward)
        if self.acks is not None:  # logged when its answer comes (AgentAcks)
            actions.extend(self.acks.client_update(json.loads(text), now))
            return actions
        actions.append(ToUpstream(text))
        if delta is not None:  # (a dialect without its own update handling)
            forwarded: Delta = {k: v for k, v in delta.items() if k not in stripped}
            update = ClientUpdate("sent", forwarded, json.loads(text))
            if update.logged:
                actions.append(ClientChange(update))
        return actions

    def _streaming_update(
        self, model: StreamingUpstream, message: dict[str, Any], data: str
    ) -> list[Action]:
        """A client's ``UpdateConfiguration``, judged on its effect by the upstream's own
        config model: what would change a locked field is stripped (the client gets a
        ``Warning`` naming it), the rest goes upstream and is logged with its effective delta
        (presets, clamps and dropped keyterms included). Logged and adopted before the frame
        goes: the model, the push state and the wire keep one order."""
        locks = {f: f"policy {ref.id} v{ref.version}" for f, ref in self.ls.locks.items()}
        effect = model.client_update(message, locks)
        refusal = None
        if effect.stripped:
            error = "; ".join(effect.stripped.values())
            refusal = ClientRefusal(dict(effect.refused), message, error)
        forwarded = effect.delta if effect.forward is not None else {}
        update = ClientUpdate("sent", forwarded, effect.forward, refusal=refusal,
                              in_doubt=self._settles(forwarded))  # fmt: skip
        changes = refusal or update.logged or update.in_doubt is not None
        actions: list[Action] = [ClientChange(update)] if changes else []
        if effect.forward is not None:
            actions.append(ToUpstream(data if not effect.stripped else json.dumps(effect.forward)))
        if effect.warning is not None:
            actions.append(ToClient(json.dumps(effect.warning), quiet=True))
        return actions

    def _settles(self, fields: Delta) -> frozenset[str] | None:
        """An update setting ``fields`` goes upstream (Streaming v3): they are carried, and no
        longer in doubt; the fields still in doubt when that changed them (else None)."""
        self.carried.update(fields)
        if not self.doubt.intersection(fields):
            return None
        self.doubt.difference_update(fields)
        return frozenset(self.doubt)

    def _over_rate(self) -> list[Action]:
        """Empty when this client update is within the session's rate; else the refusal: the
        update is dropped, neither forwarded nor logged (docs/reliability.md)."""
        if self.rates.allow(self.ls.session.id):
            return []
        problem = self.rates.problem()
        if self.dialect.acknowledges:
            return [Count("rate_limited"), ToClient(agent_error("rate_limited", problem), True)]
        frame = {"type": "Error", "error_code": RATE_LIMIT_CLOSE, "error": problem}
        return [
            Count("rate_limited"),
            ToClient(json.dumps(frame), quiet=True),
            CloseClient(RATE_LIMIT_CLOSE, problem),
        ]

    def _refuse(self, problem: str) -> list[Action]:
        """A client frame we cannot record faithfully: refused the way the upstream refuses
        bad JSON. Nothing reaches the upstream."""
        log.info("session %s: client frame refused: %s", self.ls.session.id, problem)
        if self.dialect.acknowledges:
            text = agent_error("invalid_format", f"message refused: {problem}")
            return [Count("invalid_frame"), ToClient(text, quiet=True)]
        code = STREAMING_CLOSE["invalid_message"]
        reason = f"Invalid JSON: {problem}"
        frame = {"type": "Error", "error_code": code, "error": reason}
        return [Count("invalid_frame"), ToClient(json.dumps(frame), quiet=True),
                CloseClient(code, reason)]  # fmt: skip

    def _owners(self, fields: tuple[str, ...]) -> str:
        locks = self.ls.locks
        return ", ".join(f"{f} locked by policy {locks[f].id} v{locks[f].version}" for f in fields)

    # -- the upstream's frames, our pushes, time -----------------------------------------------
    def upstream_text(self, data: str, now: float) -> list[Action]:
        try:
            parsed = json.loads(data)
        except ValueError:
            return [ToClient(data)]
        event = self.dialect.parse_upstream(parsed) if isinstance(parsed, dict) else None
        acks = self.acks
        if isinstance(event, base.Ready):  # (the connect's answer logged before the client
            actions: list[Action] = [Ready(event.upstream_id)]  # sees it)
            if acks is not None and isinstance(parsed, dict):
                actions.extend(acks.ready(parsed, now))
            actions.append(ToClient(data))
            actions.append(Kick())
            return actions
        if isinstance(event, base.TurnBoundary):
            return [ToClient(data), TurnBoundary()]
        if isinstance(event, base.Acked | base.Rejected) and acks is not None:
            assert isinstance(parsed, dict)
            return acks.answer(parsed, data, now)  # attributed: forwarded or consumed
        streaming = self.streaming
        if streaming is not None and isinstance(parsed, dict):
            if parsed.get("type") == "Error" and not self.ls.push.ready:  # (no Begin yet)
                return [ConnectAnswer(_connect_refused(parsed), self.connect_refs), ToClient(data)]
            if _unpredicted(streaming, parsed):
                self.doubt = set(self.carried)
                return [ToClient(data), ClientChange(_doubt(parsed, frozenset(self.doubt)))]
        return [ToClient(data)]

    def push(self, push: Push, wire: dict[str, Any], text: str, now: float) -> list[Action]:
        """The engine writes ``push`` (``wire``, encoded as ``text``); refused (raises
        ``ConnectionError``) once the client's ``Terminate`` went upstream."""
        if self.terminated:
            raise ConnectionError(TERMINATED)
        if self.acks is not None:  # sent when no other session.update is outstanding
            return self.acks.push(push, wire, now)
        if self.streaming is not None:
            self.streaming.pushed(wire)
            went = {f: v for f, v in push.delta.items() if f in STREAMING_WIRE
                    and STREAMING_WIRE[f][0] in wire}  # fmt: skip
            settled = self._settles(went)  # (a field the model skips never goes)
            if settled is not None:  # (after the frame: the doubt ends once it went)
                return [ToUpstream(text), ClientChange(ClientUpdate("sent", {}, None,
                                                                    in_doubt=settled))]  # fmt: skip
        return [ToUpstream(text)]

    def reconnected(
        self, first: tuple[dict[str, Any], tuple[PolicyRef, ...], int] | str, now: float
    ) -> list[Action]:
        """After ``Reconnect``: the new connect's first message, its policy versions and
        version (``SessionPort.reconnect``), or why it could not be made (the client learns
        why, in its own protocol; the session stays open)."""
        if isinstance(first, str):
            return [ToClient(agent_error("invalid_config", first), quiet=True)]
        assert self.acks is not None
        message, refs, version = first
        return self.acks.first(message, now, refs, version)

    def next_deadline(self) -> float | None:
        return None if self.acks is None else self.acks.next_deadline()

    def on_timer(self, now: float) -> list[Action]:
        return [] if self.acks is None else self.acks.on_timer(now)

    def close(self) -> list[Action]:
        """The session ended (what is still outstanding is settled)."""
        return [] if self.acks is None else self.acks.close()


def _connect_refused(error: dict[str, Any]) -> PushRejected:
    """A Streaming v3 ``Error`` before ``Begin``: the upstream refused the connect (a bad
    ``speech_model``, a value over the upstream's limit, say); no upstream session ran its
    parameters (``connect`` ``rejected``, as a Voice Agent connect's ``session.error``). The
    fields it names (a query parameter named in its text, as a Voice Agent ``param``) are the
    refused ones: the rollout guard charges the policy versions owning them."""
    text = str(error.get("error") or "")[:500]
    named = frozenset(
        name
        for name, (wire, _) in STREAMING_WIRE.items()
        if re.search(rf"(?<![\w.]){re.escape(wire)}(?![\w.])", text)
    )
    return PushRejected(str(error.get("error_code")), text, named or None)


def _unpredicted(model: StreamingUpstream, parsed: dict[str, Any]) -> bool:
    """A Streaming v3 ``Warning``, or ``Error`` about a message (code 3006, then the upstream
    closes), that the upstream's config model did not predict: some earlier update was not
    applied as recorded."""
    if parsed.get("type") == "Warning":
        return not model.upstream_warning(str(parsed.get("warning") or ""))
    if parsed.get("type") == "Error" and parsed.get("error_code") == INVALID_MESSAGE:
        return not model.upstream_error()
    return False


def _doubt(warning: dict[str, Any], fields: frozenset[str]) -> ClientUpdate:
    """A Streaming v3 ``Warning`` (or ``Error``) the upstream's config model did not predict:
    the upstream did not apply some earlier update (ours or the client's) wholly as recorded,
    and the protocol has no correlation to say which: logged ``upstream`` ``unverified`` with
    the frame (docs/audit.md, "Streaming v3 warnings"); ``fields``, every field an update set
    on this connection so far, are in doubt (the session's ``in_doubt``) until an update sets
    each again; nothing else changes."""
    kind = str(warning.get("type"))
    code = warning.get("warning_code", warning.get("error_code"))
    text = str(warning.get("warning") or warning.get("error") or "")[:500]
    doubted = ", ".join(ordered_fields(fields)) or "none (no update set a field yet)"
    error = (
        f"the upstream's {kind} {code}: {text!r}: an earlier update may not have "
        "been applied as recorded (Streaming v3 has no correlation: which one is unknown); "
        f"in doubt: {doubted}"
    )
    return ClientUpdate("unverified", {}, dict(warning), error, cause="upstream",
                        in_doubt=fields)  # fmt: skip


def agent_error(code: str, message: str, param: str | None = None) -> str:
    """A Voice Agent ``session.error`` frame."""
    body = {"type": "session.error", "code": code, "message": message}
    if param is not None:
        body["param"] = param
    return json.dumps(body)


def _locked_error(ls: LiveSession, fields: tuple[str, ...]) -> str:
    """Voice Agent: the locked fields stripped from a client's ``session.update`` are refused
    with a ``session.error`` ``immutable_field`` (the code clients already treat as "change
    dropped, session open"), ``param`` the first field's path, the message naming them all."""
    paths = [VOICE_AGENT_V1.wire_path(f) for f in fields]
    owners = "; ".join(
        f"{path} ({f}) is locked by policy {ls.locks[f].id} v{ls.locks[f].version}"
        for f, path in zip(fields, paths, strict=True)
    )
    return agent_error("immutable_field", f"refused by the control plane: {owners}", paths[0])

"""Voice Agent acknowledgements, attributed (sans-I/O): which ``session.update`` an answer ends.

:class:`AgentAcks` holds one Voice Agent session's upstream leg as a machine: events in (our
push, the client's update or other message, ``session.ready``, an answer, the clock), actions
out (``controlplane.push.actions``). The attribution rules are those of
``sessions.dialects.voice_agent_v1_upstream.AgentUpstream`` (one update outstanding, answers
matched by echo and ``param``, never guessed; read its docstring). This module turns its
verdicts into what the service records:

- our push's: :class:`~controlplane.push.acks.PushApplied` (``acked``),
  :class:`~controlplane.push.acks.PushRejected` with the refused fields,
  :class:`~controlplane.push.acks.PushPartlyApplied` (refused in part: the fields refused are
  the ``param`` ones plus every field of the push the echo does not carry), or
  :class:`~controlplane.push.acks.PushUnverified` with the reason; a late answer to a push
  already recorded (a timeout) changes nothing;
- the client's, when its answer comes: a :class:`~controlplane.push.acks.ClientUpdate`
  ``acked`` with the effect the upstream echoed (what changed between the configuration before
  it went and the echo, plus what it asked), ``rejected`` or ``unverified``.

- the connect's (the first ``session.update``, carrying the session's effective config):
  ``session.ready`` is its acknowledgement — :class:`~controlplane.push.acks.PushApplied`
  when the configuration it echoes carries every canonical value the message sent, else
  :class:`~controlplane.push.acks.PushUnverified` naming the mismatch; a ``session.error``
  refuses it (:class:`~controlplane.push.acks.PushRejected`; the session stays open, as the
  upstream's does: no upstream session exists, and the client's next ``session.update`` is
  a new connect, :class:`~controlplane.push.actions.Reconnect`, answered the same way); no
  answer within ``ack_timeout``, or the session ending first, leaves it ``unverified``.
  Each as one :class:`~controlplane.push.actions.ConnectAnswer` (a ``session.resume`` is not
  answered for the record: it runs the resumed session's configuration, not the
  connect's).

The client receives exactly the answers to its own messages. An update without an answer
within ``ack_timeout`` ends (``unverified`` for the client's; the engine times out ours) and
frees the slot; a client update still outstanding when the session ends is ``unverified``.
"""

from __future__ import annotations

import json
from typing import Any

from controlplane.push.acks import (
    ClientStatus,
    ClientUpdate,
    PushAck,
    PushApplied,
    PushPartlyApplied,
    PushRejected,
    PushUnverified,
)
from controlplane.push.actions import (
    Acknowledge,
    Action,
    ClientChange,
    ConnectAnswer,
    LateAnswer,
    Queued,
    Reconnect,
    Resumed,
    ToClient,
    ToUpstream,
    Written,
)
from controlplane.push.protocol import Push, PushState
from policies.fields import Delta
from policies.provenance import PolicyRef
from sessions.config_at import LATE_ANSWER
from sessions.dialects.base import ordered_fields
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.dialects.voice_agent_v1_table import CANONICAL_TO_WIRE
from sessions.dialects.voice_agent_v1_upstream import (
    NOT_AN_UPDATE_ERRORS,
    AgentUpstream,
    Update,
    Verdict,
    canonical_view,
)
from sessions.errors import DialectError

__all__ = ["AgentAcks", "UpdateQueueFull", "param_fields"]

QUEUE_FULL = "too many session.update messages waiting for an answer"


class UpdateQueueFull(ConnectionError):
    """Our push cannot even be queued: too many updates wait for an answer (the engine
    records it not sent, ``wire_failed``)."""


def param_fields(param: str | None) -> frozenset[str] | None:
    """The canonical fields a Voice Agent ``session.error`` ``param`` names (a dotted path
    such as ``system_prompt`` or ``input.turn_detection.min_silence``; a prefix such as
    ``input.turn_detection`` covers its children); None when it names none of ours."""
    if not param:
        return None
    path = tuple(param.split("."))
    named = frozenset(
        name
        for name, wire in CANONICAL_TO_WIRE.items()
        if wire[: len(path)] == path or path[: len(wire)] == wire
    )
    return named or None


class AgentAcks:
    """One Voice Agent session's upstream leg: one ``session.update`` outstanding, answers
    attributed. ``push_state``: the session's push state once attached (read only: whether an
    answer or a queued update still concerns the push in flight)."""

    __slots__ = (
        "_armed", "_connect", "_late", "_resume", "ack_timeout", "leaving", "model",
        "push_state", "refused",
    )  # fmt: skip

    def __init__(self, *, ack_timeout: float, applies_rest: bool = False) -> None:
        self.model = AgentUpstream(applies_rest=applies_rest)
        self.ack_timeout = ack_timeout
        self.push_state: PushState | None = None
        self._armed: tuple[float, Update] | None = None  # (deadline, the update it times)
        # the connect's first message, the policy versions it carries and its version, until
        # answered
        self._connect: tuple[Update, tuple[PolicyRef, ...], int] | None = None
        # the connect recorded unverified for want of an answer in time: its late answer
        # (session.ready, or a session.error refusing it) is still recorded
        self._late: tuple[Update, tuple[PolicyRef, ...], int] | None = None
        self._resume: Update | None = None  # a session.resume, until session.ready
        # the client left: answers to what went are still awaited, nothing more is sent
        self.leaving = False
        self.refused = False  # the upstream refused the first message: no upstream session

    # -- what goes upstream ---------------------------------------------------------------
    def first(
        self,
        message: dict[str, Any],
        now: float,
        refs: tuple[PolicyRef, ...] | None = None,
        version: int = 1,
    ) -> list[Action]:
        """The session's first message (answered by ``session.ready``), or the next one after
        the upstream refused it. ``refs``: the policy versions a connect ``session.update``
        carries, ``version`` its config version (its answer is a ``ConnectAnswer``); None:
        not answered for the record (``session.resume``)."""
        update = self.model.first(message)
        self.refused = False
        self._late = None
        self._arm(update, now)
        if refs is not None:
            self._connect = (update, refs, version)
        elif message.get("type") == "session.resume":
            self._resume = update
        return [ToUpstream(json.dumps(message))]

    def push(self, push: Push, wire: dict[str, Any], now: float) -> list[Action]:
        """One of our pushes: sent now, or queued behind an outstanding update (its
        acknowledgement timer starts when it is written: ``Written``). Raises
        :class:`UpdateQueueFull` when it cannot even be queued."""
        update = Update("ours", wire, version=push.version, token=push)
        if not self.model.submit(update):
            raise UpdateQueueFull(QUEUE_FULL)
        actions = self._next(now)
        if update in self.model.queue:
            actions.append(Queued(push))
        return actions

    def client_update(self, message: dict[str, Any], now: float) -> list[Action]:
        """The client's ``session.update`` (locked fields already stripped)."""
        if self.refused:  # no upstream session: the upstream takes it as a first message
            return [Reconnect(message)]
        if not self.model.submit(Update("client", message)):
            return [ToClient(_error("invalid_format", QUEUE_FULL), quiet=True)]
        return self._next(now)

    def client_other(self, text: str) -> list[Action]:
        """Any other client text that may draw a ``session.error`` (not audio)."""
        self.model.client_other()
        return [ToUpstream(text)]

    def _next(self, now: float) -> list[Action]:
        """The queued update that goes now, if no other is outstanding (none once the client
        left: ``leaving``)."""
        while not self.leaving and (update := self.model.next_to_send()) is not None:
            if update.owner == "ours" and not self._in_flight(update):
                self.model.withdraw(update)  # its outcome was recorded meanwhile (timeout)
                continue
            self._arm(update, now)
            if update.owner == "ours":
                return [Written(update.token), ToUpstream(update.text)]
            return [ToUpstream(update.text)]
        return []

    def _in_flight(self, update: Update) -> bool:
        return self.push_state is not None and self.push_state.in_flight is update.token

    # -- answers ---------------------------------------------------------------------------
    def ready(self, parsed: dict[str, Any], now: float) -> list[Action]:
        """``session.ready`` (forwarded to the client by the caller)."""
        config = parsed.get("config")
        echo = config if isinstance(config, dict) else {}
        verdict = self.model.on_ready(echo)
        self._armed = None
        actions: list[Action] = []
        if self._resume is not None and verdict.update in (self._resume, None):
            self._resume = None  # the resumed session's config: what session.ready echoes
            if echo:
                actions.append(Resumed(echo))
        elif verdict.status == "acked" and verdict.update is not None:
            actions.extend(self._connect_answer(verdict.update, _connect_outcome(verdict.update,
                                                                                echo)))  # fmt: skip
        elif (late := self._late) is not None:  # the connect timed out: answered late
            self._late = None
            ack = _connect_outcome(late[0], echo)
            actions.append(ConnectAnswer(ack, late[1], late[2], late=True))
        actions.extend(self._next(now))
        return actions

    def answer(self, parsed: dict[str, Any], data: str, now: float) -> list[Action]:
        """A ``session.updated`` or non-fatal ``session.error`` (``data``: its text)."""
        if parsed.get("type") == "session.updated":
            config = parsed.get("config")
            verdict = self.model.on_updated(config if isinstance(config, dict) else {})
        else:
            param = parsed.get("param")
            code = str(parsed.get("code") or "unknown").lower()
            verdict = self.model.on_error(
                code, param if isinstance(param, str) else None, str(parsed.get("message") or "")
            )
        if self.model.outstanding is None:
            self._armed = None
        actions: list[Action] = [ToClient(data, quiet=True)] if verdict.forward else []
        settled = self._settle(verdict, parsed)
        late = self._late
        if late is not None and verdict.update is None and self._refuses_late(parsed):
            self._late, self.refused = None, True  # the connect that timed out was refused
            param = parsed.get("param")
            verdict = Verdict(True, late[0], "rejected", _error_reason(parsed),
                              (param,) if isinstance(param, str) else ())  # fmt: skip
            ack = self._push_outcome(late[0], verdict, parsed)
            settled = [ConnectAnswer(ack, late[1], late[2], late=True)]
        if verdict.update is not None and verdict.update.owner == "first":
            actions[:0] = settled  # the connect's answer logged before the client sees it
            queue = self.model.queue
            if self.refused and queue and queue[0].owner == "client":  # sent before the
                actions.append(Reconnect(queue.popleft().message))  # refusal: the next first
        else:
            actions.extend(settled)
        actions.extend(self._next(now))
        return actions

    def _refuses_late(self, parsed: dict[str, Any]) -> bool:
        """Whether an unattributed answer is the upstream refusing the first message late
        (no upstream session yet: a ``session.error`` about a message, not audio)."""
        code = str(parsed.get("code") or "").lower()
        return (self.model.config is None and parsed.get("type") == "session.error"
                and code not in NOT_AN_UPDATE_ERRORS)  # fmt: skip

    def _settle(self, verdict: Verdict, parsed: dict[str, Any]) -> list[Action]:
        update = verdict.update
        if update is None or verdict.status is None or self.push_state is None:
            return []
        if update.owner == "first":  # the first message refused (session.error): the
            self.refused = True  # upstream waits for another first message
            return self._connect_answer(update, self._push_outcome(update, verdict, parsed))
        if update.owner == "client":
            return [ClientChange(self._client_outcome(update, verdict))]
        if update.owner != "ours":
            return []
        ack = self._push_outcome(update, verdict, parsed)
        if self._in_flight(update):  # (a late answer still counts while the engine waits)
            return [Acknowledge(ack)]
        # its outcome was recorded already (no answer in time): the answer is recorded too
        return [LateAnswer(update.token, ack)]

    def _push_outcome(self, update: Update, verdict: Verdict, parsed: dict[str, Any]) -> PushAck:
        if verdict.status == "acked":
            return PushApplied(note=verdict.reason)  # (a reason: an ambiguous echo)
        if verdict.status not in ("rejected", "partial"):
            return PushUnverified(verdict.reason or "unattributed answer")
        fields: set[str] = set()
        for param in verdict.params:
            fields |= param_fields(param) or set()
        first = update.errors[0] if update.errors else None
        code = first[0] if first else str(parsed.get("code") or "unknown").lower()
        reason = (verdict.reason or "").removeprefix(f"{code}: ")  # the engine adds the code
        if verdict.status == "rejected" or update.owner == "first":
            return PushRejected(code, reason, frozenset(fields) or None)
        # the rest applied: what runs is what the echo shows (a field of the push whose value
        # the echo does not carry was refused)
        pushed: Push = update.token
        echo = canonical_view(self.model.config or {})
        fields |= {f for f, v in pushed.delta.items() if echo.get(f) != v}
        return PushPartlyApplied(code, reason, frozenset(fields))

    def _client_outcome(self, update: Update, verdict: Verdict) -> ClientUpdate:
        try:
            asked: Delta = VOICE_AGENT_V1.parse_client_update(update.message) or {}
        except DialectError:
            asked = {}
        if verdict.status not in ("acked", "partial"):
            status: ClientStatus = "rejected" if verdict.status == "rejected" else "unverified"
            return ClientUpdate(status, asked, update.message, verdict.reason)
        note = None  # refused in part: the rest applied, the delta is what the echo shows
        if verdict.status == "partial":
            note = f"refused in part ({verdict.reason}); the rest applied"
        if verdict.status == "acked" and verdict.reason:  # (an ambiguous echo: said)
            note = verdict.reason
        if verdict.late:  # (its outcome was recorded before: no answer in time, or unsure)
            note = "; ".join(filter(None, (LATE_ANSWER, note)))
        before = canonical_view(update.before or {})
        after = canonical_view(self.model.config or {})
        names = set(asked) | {n for n in set(before) | set(after) if before.get(n) != after.get(n)}
        delta: Delta = {n: after.get(n) for n in ordered_fields(names)}
        return ClientUpdate("acked", delta, update.message, note)

    # -- time, and the end -------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        return None if self._armed is None else self._armed[0]

    def on_timer(self, now: float) -> list[Action]:
        """The outstanding update got no answer within ``ack_timeout``: it ends (a late answer
        is still recognised) and the next queued update goes."""
        if self._armed is None or now < self._armed[0]:
            return []
        update, self._armed = self._armed[1], None
        if not self.model.expire(update):
            return []
        actions: list[Action] = []
        if update.owner == "first":
            reason = f"no session.ready within {self.ack_timeout:g}s"
            connect = self._connect
            answer = self._connect_answer(update, PushUnverified(reason))
            if answer:
                self._late = connect
            actions.extend(answer)
        elif update.owner == "client" and self.push_state is not None:
            reason = "; ".join([f"no answer within {self.ack_timeout:g}s", *update.doubts])
            verdict = Verdict(False, update, "unverified", reason)
            actions.append(ClientChange(self._client_outcome(update, verdict)))
        actions.extend(self._next(now))
        return actions

    def close(self) -> list[Action]:
        """The session ended: a client update still waiting for its answer is ``unverified``
        (the upstream may or may not have applied it)."""
        self._armed = self._late = None
        update = self.model.outstanding
        reason = "the session ended before the upstream answered"
        if update is not None and update.owner == "first":
            self.model.expire(update)
            return self._connect_answer(update, PushUnverified(reason))
        if update is None or update.owner != "client" or self.push_state is None:
            return []
        self.model.expire(update)
        verdict = Verdict(False, update, "unverified", reason)
        return [ClientChange(self._client_outcome(update, verdict))]

    def _arm(self, update: Update, now: float) -> None:
        self._armed = (now + self.ack_timeout, update)

    def _connect_answer(self, update: Update, ack: PushAck) -> list[Action]:
        """The connect's one answer (nothing when ``update`` is not the connect's message, or
        it was answered already)."""
        connect = self._connect
        if connect is None or connect[0] is not update:
            return []
        self._connect = None
        return [ConnectAnswer(ack, connect[1], connect[2])]


def _connect_outcome(update: Update, echo: dict[str, Any]) -> PushAck:
    """``session.ready`` answering the connect: applied when the configuration it echoes
    carries every canonical value the first message sent (an upstream that echoes nothing
    leaves only the answer itself to go by), else unverified, naming the mismatch."""
    body = update.message.get("session")
    sent = canonical_view(body) if isinstance(body, dict) else {}
    if not echo:
        return PushApplied()
    runs = canonical_view(echo)
    wrong = [name for name, value in sent.items() if runs.get(name) != value]
    if not wrong:
        return PushApplied()
    shown = ", ".join(f"{n} is {json.dumps(runs.get(n))[:80]}, sent {json.dumps(sent[n])[:80]}"
                      for n in wrong)  # fmt: skip
    return PushUnverified(f"session.ready does not echo the connect's values ({shown})")


def _error_reason(parsed: dict[str, Any]) -> str:
    return f"{str(parsed.get('code') or 'unknown').lower()}: {parsed.get('message') or ''}"


def _error(code: str, message: str) -> str:
    return json.dumps({"type": "session.error", "code": code, "message": message})

"""Which message a Voice Agent answer belongs to, without guessing (sans-I/O).

The Voice Agent API has no correlation id. What it does give: the upstream processes one
socket's messages in order; ``session.updated`` echoes the full resolved configuration;
``session.error`` carries a ``code`` and usually a ``param`` (the offending path). So:

- **One ``session.update`` outstanding per session**, ours and the client's alike; the others
  wait in ``queue`` (first come, first sent). The first message (``session.update`` or
  ``session.resume``) is outstanding until ``session.ready``.
- Each update, when it goes upstream, gets its **expectation** from the upstream's own model
  (``voice_agent_v1_config``, the code the emulator runs): the validation error it will draw,
  or the immutable paths it will be refused on, or the full configuration it should echo.
- ``session.updated``: it belongs to the outstanding update when the echo matches what that
  update expects (every canonical path and every path it touches). Otherwise it may be a late
  answer to an update that already ended (a timeout, a partly refused update whose rest was
  applied): matched the same way against those. An echo that matches nothing while an update
  is outstanding is that update's answer by elimination, ``unverified`` with the mismatch as
  the reason (the configuration is taken from the echo either way: it is the truth).
- ``session.error``: audio codes and ``invalid_format`` never answer an update; with a
  ``param`` the error belongs to the update that touches that path (outstanding, else a
  recently ended one), else to no update (a ``tool.result`` with an unknown ``call_id``…).
  Without a ``param`` it belongs to the outstanding update only when no other client message
  could have drawn it (none sent since the last answered update went upstream: the upstream
  answers in order). Otherwise it goes to the client, and the update stays outstanding: a
  matching ``session.updated`` proves it applied; none within the timeout ends it
  ``unverified``, the doubt in the reason.
- **Owed answers come first.** An update that timed out (``expire``) is still owed its
  answer, and the upstream answers in order: while one is owed, an answer is checked against
  the oldest owed update *before* the outstanding one (``session.updated``: its echo matches
  what that update expects; ``session.error``: its ``param`` is a path it touches, or no
  ``param`` while every client message sent before it was answered), and a ``param``-less
  ``session.error`` is never pinned on the outstanding update while an answer is owed. Once
  the outstanding update is answered, nothing sent before it is owed any more.
- The client receives exactly the answers to its own messages: ``Verdict.forward``.

The gateway does the I/O: it sends what ``next_to_send`` hands out, passes every answer in,
and records verdicts (ours to the push engine, the client's as ``client`` log entries).
"""

from __future__ import annotations

import copy
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from policies.fields import Config
from sessions.dialects.voice_agent_v1_config import (
    MISSING,
    TABLE_SETTINGS,
    AgentSettings,
    get_path,
    immutable_changes,
    merge,
    resolve_formats,
    touched_paths,
    validate,
    without_paths,
)
from sessions.dialects.voice_agent_v1_table import CANONICAL_TO_WIRE, IMMUTABLE_PATHS

__all__ = [
    "AMBIGUOUS",
    "AUDIO_ONLY_ERRORS",
    "NOT_AN_UPDATE_ERRORS",
    "OWED_MAX",
    "AgentUpstream",
    "Owner",
    "Update",
    "Verdict",
    "canonical_view",
]

AUDIO_ONLY_ERRORS: Final = frozenset({"invalid_audio", "audio_rate_violation"})
NOT_AN_UPDATE_ERRORS: Final = AUDIO_ONLY_ERRORS | {"invalid_format"}
RECENT: Final = 4  # ended updates kept for late answers
# an acknowledgement whose echo an earlier timed-out update expects too (``_twin``)
AMBIGUOUS: Final = "acknowledged by an echo whose update cannot be told"
OWED_MAX: Final = 64  # timed-out updates still owed their answer (beyond: the order is lost)
MAX_QUEUED: Final = 64

Owner = Literal["first", "ours", "client"]
# "partial": refused in part (``session.error`` with a param), the rest applied (an upstream
# that applies the rest answers it with a ``session.updated`` after the errors)
Status = Literal["acked", "partial", "rejected", "unverified"]
_CANONICAL_PATHS: Final = tuple(".".join(p) for p in CANONICAL_TO_WIRE.values())
_SPLIT: Final = {".".join(p): p for p in CANONICAL_TO_WIRE.values()}


def canonical_view(config: Mapping[str, Any]) -> Config:
    """The canonical fields of a full ``session`` config (clearing values read as unset)."""
    view: Config = {}
    for name, path in CANONICAL_TO_WIRE.items():
        raw = get_path(config, path)
        if raw is MISSING or raw is None or raw in ("", []):
            continue
        view[name] = tuple(raw) if isinstance(raw, list) else raw
    return view


@dataclass(eq=False)
class Update:
    """One ``session.update`` (or the first message) on its way to or at the upstream."""

    owner: Owner
    message: dict[str, Any]
    version: int | None = None  # our push's version
    token: Any = None  # the caller's own handle (the push)
    touched: tuple[str, ...] = ()
    before: dict[str, Any] | None = None  # the upstream's config when it went
    expected: dict[str, Any] | None = None  # the config it should echo (None: refused)
    refused: tuple[str, ...] = ()  # paths it will be refused on
    after_seq: int = 0  # client messages sent before it
    errors: list[tuple[str, str | None, str]] = field(default_factory=list)
    doubts: list[str] = field(default_factory=list)  # answers that may have been its own
    # timed out (``expire``) and not answered since: its answer may still come
    unanswered: bool = False
    # acknowledged by an echo an earlier timed-out update (this) expects too (``_twin``)
    twin: Update | None = None

    @property
    def text(self) -> str:
        return json.dumps(self.message)


@dataclass(frozen=True)
class Verdict:
    """What one upstream answer is. ``update``: the update it answers (``None``: not an
    update's answer); ``status``: that update's outcome when this answer ends it (``None``:
    not the end, or a late answer to an update already recorded); ``reason`` for a status
    other than ``acked``; ``params``: the refused paths; ``forward``: the client gets it."""

    forward: bool
    update: Update | None = None
    status: Status | None = None
    reason: str | None = None
    params: tuple[str, ...] = ()
    late: bool = False


class AgentUpstream:
    """One Voice Agent session's outstanding update, queue, and known configuration."""

    def __init__(
        self, settings: AgentSettings = TABLE_SETTINGS, *, applies_rest: bool = False
    ) -> None:
        self.settings = settings
        # what the upstream does with the rest of an update refused in part (PROTOCOLS.md
        # leaves it open): False, nothing applied (the errors end the update); True, the rest
        # applied and answered by a session.updated after the errors (the update stays
        # outstanding until then)
        self.applies_rest = applies_rest
        self.config: dict[str, Any] | None = None  # as last echoed (session.ready / updated)
        self.outstanding: Update | None = None
        self.queue: deque[Update] = deque()
        self.ended: deque[Update] = deque(maxlen=RECENT)
        # updates that timed out and are still owed their answer, oldest first (in order)
        self.owed: deque[Update] = deque()
        # more updates timed out than ``owed`` keeps: which answer is whose is lost until an
        # update is answered in time (no param-less error is pinned by order meanwhile)
        self.order_lost = False
        self.client_seq = 0  # client messages (not updates, not audio) sent upstream
        self.answered_seq = 0  # every client message up to this one has been answered

    # -- what goes upstream ---------------------------------------------------------------
    def first(self, message: dict[str, Any]) -> Update:
        """The session's first message went upstream (answered by ``session.ready``)."""
        update = Update("first", message)
        self.outstanding = update
        return update

    def submit(self, update: Update) -> bool:
        """Queue ``update``; False when the queue is full (refuse it)."""
        if len(self.queue) >= MAX_QUEUED:
            return False
        self.queue.append(update)
        return True

    def next_to_send(self) -> Update | None:
        """The queued update to send now (it becomes outstanding), or None."""
        if self.outstanding is not None or not self.queue or self.config is None:
            return None
        update = self.queue.popleft()
        self._expect(update)
        self.outstanding = update
        return update

    def withdraw(self, update: Update) -> None:
        """An update handed out but not sent after all (our push ended meanwhile)."""
        if self.outstanding is update:
            self.outstanding = None

    def client_other(self) -> None:
        """The client sent another message that may draw a ``session.error``."""
        self.client_seq += 1

    def expire(self, update: Update) -> bool:
        """``update`` got no answer in time: it ends (a late answer is still recognised).
        False when it had ended already."""
        if self.outstanding is not update:
            return False
        self._end(update, answered=False)
        update.unanswered = True
        if update.owner != "first" and not update.doubts:  # (an answer that may have been
            self.owed.append(update)  # its own came already: not owed, nothing is pinned)
            if len(self.owed) > OWED_MAX:
                self.owed.clear()
                self.order_lost = True
        return True

    # -- answers ----------------------------------------------------------------------------
    def on_ready(self, config: Mapping[str, Any]) -> Verdict:
        self.config = copy.deepcopy(dict(config))
        update = self.outstanding
        if update is not None and update.owner == "first":
            self._end(update)
            return Verdict(True, update, "acked")
        return Verdict(True)

    def on_updated(self, config: Mapping[str, Any]) -> Verdict:
        """``config``: the echoed configuration (empty when the upstream echoes none, as the
        predecessor API did: then nothing can be verified and the known config is kept)."""
        echo = dict(config)  # a fresh parse; configs are replaced, never changed in place
        update = self.outstanding
        if echo:
            self.config = echo
        owed = self.owed[0] if self.owed else None
        if owed is not None and _mismatch(owed, echo) is None:  # answered in order: late
            verdict = self._late(owed, self._answered(owed, echo))
            self._reexpect()  # what went after it goes on from the echoed config
            return verdict
        if update is not None and update.owner != "first" and _mismatch(update, echo) is None:
            ambiguous = self._twin(update, echo)
            if ambiguous is not None:
                return ambiguous
            return self._answered(update, echo)
        for old in reversed(self.ended):
            if _mismatch(old, echo) is None:
                if update is not None and update.owner != "first":
                    self._expect(update, keep_seq=True)  # it goes on from the echoed config
                answered, twin, old.twin = old, old.twin, None
                if twin is not None and twin.unanswered and _mismatch(twin, echo) is None:
                    answered = twin  # the first echo was the earlier update's, in order (_twin)
                answered.unanswered = False
                return Verdict(answered.owner != "ours", answered, "acked", late=True)
        if update is None or update.owner == "first":
            return Verdict(True)  # nothing could have asked for it: not ours to keep
        reason = (
            f"session.updated does not echo what this update expects ({_mismatch(update, echo)})"
            "; attributed only because it was the one update outstanding"
        )
        self._end(update)
        return Verdict(update.owner != "ours", update, "unverified", reason)

    def on_error(self, code: str, param: str | None, message: str) -> Verdict:
        if code in NOT_AN_UPDATE_ERRORS:
            return Verdict(True)
        update = self.outstanding
        owed = self.owed[0] if self.owed else None
        if param is not None:
            if owed is not None and _related(param, owed):  # answered in order: late
                verdict = self._refused(owed, code, param, message)
                return self._late(owed, verdict) if verdict.status is not None else verdict
            if update is not None and _related(param, update):
                return self._refused(update, code, param, message)
            for old in reversed(self.ended):
                if _related(param, old):
                    old.unanswered = False
                    return Verdict(old.owner != "ours", old, late=True)
            return Verdict(True)
        if self.order_lost:
            owed = None  # (an older update's answer may come first: nothing is certain)
        if owed is not None and owed.after_seq <= self.answered_seq:  # in order: nothing
            return self._late(owed, self._refused(owed, code, None, message))  # else before it
        if owed is not None:  # the oldest owed update's answer, or a client message's sent
            # before it (in order: nothing sent after it): that update is owed no more (a later
            # echo matching it is not pinned on it first; it stays unverified, the doubt said)
            self.owed.popleft()
            owed.doubts.append(f"session.error {code} ({message}) without a param came after "
                               "its timeout while another client message was unanswered: it "
                               "may have been its answer")  # fmt: skip
            return Verdict(True)
        if update is None:
            return Verdict(True)
        if update.owner == "first" or (
            self.client_seq <= self.answered_seq and owed is None and not self.order_lost
        ):
            return self._refused(update, code, None, message)
        # another client message may have drawn it: it goes to the client either way, and
        # the update stays outstanding: its session.updated proves the error was not its
        # answer; none within the timeout leaves it unverified, with this doubt as the reason
        unanswered = self.client_seq - self.answered_seq
        update.doubts.append(
            f"session.error {code} ({message}) without a param came while {unanswered} other "
            f"client message(s) and {len(self.owed)} timed-out update(s) were unanswered: it "
            "may have answered this update"
        )
        return Verdict(True, update)

    def _twin(self, update: Update, echo: dict[str, Any]) -> Verdict | None:
        """An echo the outstanding ``update`` expects that an earlier update, timed out and
        not owed (an answer that may have been its own came: ``doubts``), expects too: by
        order it is that update's answer if its own has not come yet, else this one's, and
        nothing tells which. The configuration it shows runs either way: ``update`` ends
        ``acked`` (what it asked runs), the reason saying the answer is ambiguous; when a
        second such echo comes, the first was the earlier update's (it answers first) and
        this one is ``update``'s: it is recorded as the earlier update's late answer, never a
        second one of ``update``'s (``twin``). None: no such earlier update."""
        for old in self.ended:
            if old is not update and old.unanswered and _mismatch(old, echo) is None:
                verdict = self._answered(update, echo)
                if verdict.status != "acked":
                    return verdict
                update.twin = old
                reason = (
                    f"{AMBIGUOUS}: an earlier update ({_describe(old)}) that timed out "
                    "unanswered expects this echo too, and the upstream answers in order: it "
                    f"is that update's answer unless an earlier answer "
                    f"({'; '.join(old.doubts) or 'none attributed'}) was its own; what "
                    "both asked runs either way"
                )
                return Verdict(verdict.forward, update, "acked", reason)
        return None

    def _late(self, owed: Update, verdict: Verdict) -> Verdict:
        """``verdict`` ends ``owed`` (an update that timed out), answered late: no longer owed,
        nor anything sent before it."""
        owed.unanswered = False
        while self.owed:
            if self.owed.popleft() is owed:
                break
        self.answered_seq = max(self.answered_seq, owed.after_seq)
        if verdict.status == "rejected":  # the updates sent after it expected it applied:
            self._reexpect()  # they go on from what runs (found by the property test)
        return Verdict(verdict.forward, verdict.update, verdict.status, verdict.reason,
                       verdict.params, late=True)  # fmt: skip

    # -- internals --------------------------------------------------------------------------
    def _reexpect(self) -> None:
        """An update answered late applied: the updates sent after it (still owed, then the
        outstanding one) expected the config before it; they go on from the echo, in order."""
        later = list(self.owed)
        if self.outstanding is not None and self.outstanding.owner != "first":
            later.append(self.outstanding)
        known = self.config
        for update in later:
            self._expect(update, keep_seq=True)
            if update.expected is not None:
                self.config = update.expected  # (the next one goes on from this one's)
        self.config = known

    def _expect(self, update: Update, *, keep_seq: bool = False) -> None:
        assert self.config is not None
        body = update.message.get("session", {})
        update.before = self.config
        if not keep_seq:
            update.after_seq = self.client_seq
        if not isinstance(body, Mapping):
            return
        update.touched = tuple(touched_paths(body))
        if validate(body, self.settings) is not None or "agent_id" in body:
            return  # refused whole: expected stays None
        refused = immutable_changes(self.config, body) if _may_be_immutable(update) else []
        update.refused = tuple(refused)
        rest = without_paths(body, refused) if refused else body
        update.expected = resolve_formats(merge(self.config, rest))

    def _answered(self, update: Update, echo: dict[str, Any]) -> Verdict:
        self._end(update)
        if update.errors:  # refused in part, the rest applied (when there is a rest)
            params = tuple(p for _, p, _ in update.errors if p is not None)
            reason = "; ".join(f"{c}: {m}" for c, _, m in update.errors)
            refused = (*update.refused, *params)
            rest = [p for p in update.touched if not _covered(p, refused)]
            status: Status = "partial" if rest else "rejected"
            return Verdict(update.owner != "ours", update, status, reason, params)
        return Verdict(update.owner != "ours", update, "acked")

    def _refused(self, update: Update, code: str, param: str | None, message: str) -> Verdict:
        """An error for ``update``. It ends the update unless more errors are predicted for
        it (one per immutable path); a ``session.updated`` for the rest of it may still come
        (an upstream that applies the rest): matched as a late answer."""
        update.errors.append((code, param, message))
        params = tuple(p for _, p, _ in update.errors if p is not None)
        if param is not None and set(update.refused) - set(params):
            return Verdict(update.owner != "ours", update)  # more errors to come
        if update.before is not None and update.expected is not None and param is not None:
            body = update.message.get("session", {})
            rest = without_paths(body, [*update.refused, *params])
            update.expected = resolve_formats(merge(update.before, rest))
            update.refused = tuple(dict.fromkeys((*update.refused, *params)))
            if self.applies_rest:  # its session.updated (the rest applied) ends it
                return Verdict(update.owner != "ours", update)
        self._end(update)
        reason = "; ".join(f"{c}: {m}" for c, _, m in update.errors)
        return Verdict(update.owner != "ours", update, "rejected", reason, params)

    def _end(self, update: Update, *, answered: bool = True) -> None:
        if self.outstanding is update:
            self.outstanding = None
        if answered:  # the upstream answers in order: every message before it was answered
            self.answered_seq = max(self.answered_seq, update.after_seq)
            if update.owner != "first" and update not in self.owed:
                self.owed.clear()  # (sent before it: answered, or never will be)
                self.order_lost = False
        if update.owner != "first" and update not in self.ended:
            self.ended.append(update)


_IMMUTABLE_HEADS: Final = frozenset(path[0] for path in IMMUTABLE_PATHS)


def _may_be_immutable(update: Update) -> bool:
    return any(path.partition(".")[0] in _IMMUTABLE_HEADS for path in update.touched)


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    """``get_path`` of a dotted path (``MISSING`` where absent)."""
    return get_path(config, _SPLIT.get(dotted) or tuple(dotted.split(".")))


def _mismatch(update: Update, echo: Mapping[str, Any]) -> str | None:
    """Why ``echo`` is not what ``update`` expects (None: it is)."""
    if update.expected is None:
        return "it should have been refused"
    paths = [p for p in update.touched if p not in update.refused]
    for path in (*_CANONICAL_PATHS, *paths):
        got, want = _get(echo, path), _get(update.expected, path)
        if got != want:
            shown = "absent" if got is MISSING else json.dumps(got)[:80]
            wanted = "absent" if want is MISSING else json.dumps(want)[:80]
            return f"{path} is {shown}, expected {wanted}"
    return None


def _describe(update: Update) -> str:
    if update.owner == "ours":
        return f"our push, version {update.version}"
    return "the client's"


def _covered(path: str, refused: tuple[str, ...]) -> bool:
    """Whether a touched ``path`` is (inside) one of the ``refused`` paths."""
    return any(path == r or path.startswith((r + ".", r + "[")) for r in refused)


def _related(param: str, update: Update) -> bool:
    """Whether an error ``param`` names a path ``update`` touches (``session``: any update)."""
    if update.owner == "first":
        return True
    param = param.removeprefix("session.")
    if param == "session":
        return True
    for path in update.touched:
        if param == path or param.startswith((path + ".", path + "[")):
            return True
        if path.startswith(param + "."):
            return True
    return False

"""Which configuration was in effect for a session at an instant, rebuilt from its log.

The session's first entry (``connect``, version 1) carries ``config``, the full configuration
the upstream started on. Later entries are replayed in seq order up to the instant, mirroring
the push engine's own model of "what the upstream runs" (``PushState.base``), and every step
is checked against the entry's ``config_hash``: that check is the evidence. Rules:

- ``connect`` v1 ``sent``: the config is the entry's ``config``; effective at once. Its
  answer, when the upstream answers the connect itself (Voice Agent: ``session.ready``), is
  ``connect`` v1 ``acked`` (acknowledged), ``rejected`` (``session.error``: no upstream
  session runs it; said) or ``unverified`` (no answer, or an echo that does not carry the
  connect's values; said). A ``connect`` v1 ``acked`` with a delta answers a
  ``session.resume``: the resumed session's configuration, applied from then on.
- a push (``policy``, ``relabel``, ``rollback``, ``retire``, ``connect`` v2+) recorded
  ``sent``: its config is ``apply(config, delta)``. When a later entry of the same version
  answers it (``acked`` / ``rejected`` / ``unverified``), the session acknowledges pushes and
  the config takes effect only with an ``acked`` answer (or ``unverified`` without error: a
  control-channel app applied it on a dialect that cannot acknowledge). Unanswered: effective
  at once (Streaming v3: "sent, not acknowledged (the protocol has none)").
- ``rejected``, and ``unverified`` with an error (no acknowledgement within the timeout): the
  previous config stays in effect (the engine re-sends those fields with the next version).
- ``skipped``: the dialect sent nothing (the model does not take the fields); the engine counts
  the fields as applied, so the rebuild does too, and says so.
- ``client`` ``sent``: the client's own update went upstream: ``apply(config, delta)``.
  ``client`` ``acked`` (Voice Agent: logged when the upstream's ``session.updated`` is
  attributed to it, ``delta`` its effect): the same. ``client`` ``rejected`` / ``unverified``:
  nothing changed.
- ``upstream`` ``unverified`` (Streaming v3: a ``Warning`` no update explains): nothing
  changes; the note says the config is in doubt (which update the upstream did not apply, the
  protocol cannot say).
- ``unchanged``: the policy versions of the session's config version ``version`` changed, the
  configuration did not (nothing sent). The config stays; the entry's ``policies`` are the
  answer's policies whenever that config version is (or later becomes) the one in effect and
  the entry is newer than the one whose policies it would replace: the push's ``sent`` entry
  when an answer established the config, else the establishing entry (``policies_by``).

**Doubts.** An entry at or before the instant that leaves the upstream's configuration
unknown is listed in ``doubts`` (``in_doubt`` true): an ``upstream`` ``unverified`` entry
(until later entries set every field it names again: the session view's ``in_doubt``), and
an answer to a push or to the connect recorded ``unverified`` with an error (no answer within
the acknowledgement timeout); a later answer of that version at or before the instant (a late
``acked``, applied or ``rejected``) resolves the push's doubt, and so do later applied updates
setting every field of its delta again (the session view's ``in_doubt``; a push sent but not
yet answered resolves nothing). The rebuilt ``config`` is then
what the record holds, not a proof of what ran: a reader must never take it as applied.

``config_hash`` records the config the upstream runs once the entry takes effect (the pushed
config for pushes; for client updates and the Voice Agent ``connect`` acknowledgement the
upstream's config, which differs from the effective config while a client overrides an
unlocked policy field). Logs written before that rule recorded the effective config there; a
step that does not match is reported as a failed check, never silently accepted. Pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from policies.delta import apply
from sessions.errors import NotRebuildable, UnknownSession
from sessions.versionchain import config_hash

__all__ = ["LATE_ANSWER", "ConfigAt", "config_at"]

# how a late answer's error starts: an answer that came after the acknowledgement timeout,
# recorded as one more entry of the version after its `unverified` one (docs/audit.md)
LATE_ANSWER = "answered after the acknowledgement timeout (recorded unverified before)"

_ANSWERS: Final = frozenset({"acked", "rejected", "unverified"})
_ENTRY_KEYS: Final = ("seq", "at", "cause", "status", "version", "hash", "config_hash", "error")
_DOUBT_KEYS: Final = ("seq", "at", "cause", "status", "version", "error")


@dataclass
class ConfigAt:
    session_id: str
    at: float
    config: dict[str, Any]
    policies: list[dict[str, Any]]
    established_by: dict[str, Any]  # the entry at which this config took effect
    status: str  # what that entry means, honestly (no acknowledgement claimed that was not)
    sent_by: dict[str, Any] | None = None  # the push's `sent` entry, when acknowledged later
    policies_by: dict[str, Any] | None = None  # the `unchanged` entry naming the policies
    checked: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)  # {"seq", "problem"}
    pending: list[dict[str, Any]] = field(default_factory=list)  # sent, answered after `at`
    notes: list[str] = field(default_factory=list)
    doubts: list[dict[str, Any]] = field(default_factory=list)  # entries leaving it unknown
    last_seq: int = 0  # the last entry at or before `at`
    log_seq: int = 0  # the last entry of the log

    @property
    def verified(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "at": self.at,
            "config": self.config,
            "policies": self.policies,
            "established_by": {**self.established_by, "meaning": self.status},
            "sent_by": self.sent_by,
            "policies_by": self.policies_by,
            "pending": self.pending,
            "rebuild": {
                "verified": self.verified,
                "checked": self.checked,
                "failures": self.failures,
                "entries_replayed": self.last_seq,
                "log_entries": self.log_seq,
            },
            "notes": self.notes,
            "in_doubt": bool(self.doubts),
            "doubts": self.doubts,
        }


def _entry(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in _ENTRY_KEYS}


def _doubted_fields(row: Mapping[str, Any]) -> set[str] | None:
    """The fields an ``upstream`` doubt entry names ("…; in doubt: a, b"; "none …": none);
    None for an entry written before they were named."""
    error = str(row.get("error") or "")
    if "; in doubt: " not in error:
        return None
    named = error.rpartition("; in doubt: ")[2]
    return set() if named.startswith("none") else set(named.split(", "))


def _is_connect(row: Mapping[str, Any]) -> bool:
    return row.get("cause") == "connect" and row.get("version") == 1


def _instant(at: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds, as the answers show instants."""
    try:
        stamp = dt.datetime.fromtimestamp(at, dt.UTC)
    except (OverflowError, ValueError, OSError):
        return str(at)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def config_at(session_id: str, rows: Sequence[Mapping[str, Any]], at: float) -> ConfigAt:
    """Rebuild the config in effect at ``at`` (Unix seconds) from a session's stored rows.

    Raises ``UnknownSession`` (no entries), ``NotRebuildable`` (``at`` before the first entry,
    or a first entry without ``config``)."""
    ordered = sorted(
        (r for r in rows if isinstance(r.get("seq"), int) and isinstance(r.get("at"), int | float)),
        key=lambda r: int(r["seq"]),
    )
    if not ordered:
        raise UnknownSession(session_id)
    first = ordered[0]
    if at < float(first["at"]):
        raise NotRebuildable(
            f"session {session_id!r} has no configuration at {_instant(at)}: its first entry "
            f"(seq {first['seq']}) is at {_instant(float(first['at']))}",
            session_id=session_id,
        )
    if not (_is_connect(first) and isinstance(first.get("config"), dict)):
        raise NotRebuildable(
            f"session {session_id!r}: its first entry (seq {first['seq']}) carries no connect "
            "config (logs written before connect entries stored it), so the configuration "
            "cannot be rebuilt",
            session_id=session_id,
        )
    return _Rebuild(session_id, ordered, at).run()


class _Rebuild:
    def __init__(self, session_id: str, rows: list[Mapping[str, Any]], at: float) -> None:
        self.rows = rows
        self.at = at
        self.acknowledging = any(r.get("status") == "acked" for r in rows)
        # version -> seqs of the answers to pushes (client entries share version numbers)
        self.answers: dict[Any, list[Mapping[str, Any]]] = {}
        for r in rows:
            if r.get("cause") not in ("client", "upstream") and r.get("status") in _ANSWERS:
                self.answers.setdefault(r.get("version"), []).append(r)
        first = rows[0]
        self.config: dict[str, Any] = dict(first["config"])
        self.result = ConfigAt(
            session_id=session_id, at=at, config={}, policies=[], established_by={},
            status="", log_seq=int(rows[-1]["seq"]),
        )  # fmt: skip
        self.pending: dict[Any, tuple[dict[str, Any], Mapping[str, Any]]] = {}
        self.established: Mapping[str, Any] = first
        self.sent: Mapping[str, Any] | None = None
        self.meaning = ""
        self.named: dict[Any, Mapping[str, Any]] = {}  # config version -> last `unchanged`
        self.doubts: dict[Any, Mapping[str, Any]] = {}  # key -> the entry leaving it unknown
        # an upstream doubt's fields still in doubt (None: not named, an older entry)
        self.doubted: dict[Any, set[str] | None] = {}

    def check(self, row: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        self.result.checked += 1
        if config_hash(config) != row.get("config_hash"):
            self.result.failures.append({
                "seq": row.get("seq"),
                "problem": f"seq {row.get('seq')} ({row.get('cause')}/{row.get('status')}): "
                "its config_hash is not the hash of the rebuilt config",
            })  # fmt: skip

    def establish(self, row: Mapping[str, Any], meaning: str, sent: Any = None) -> None:
        self.established, self.meaning, self.sent = row, meaning, sent

    def run(self) -> ConfigAt:
        for row in self.rows:
            if float(row["at"]) > self.at:
                break
            self.result.last_seq = int(row["seq"])
            self.step(row)
        for version, (_, sent) in self.pending.items():
            later = [a for a in self.answers.get(version, ()) if a["seq"] > sent["seq"]]
            self.result.pending.append({
                "version": version, "sent": _entry(sent),
                "answer": _entry(later[0]) if later else None,
            })  # fmt: skip
        if self.result.last_seq < self.result.log_seq:
            self.result.notes.append(
                f"entries after seq {self.result.last_seq} are later than the asked instant"
            )
        res = self.result
        doubted = sorted(self.doubts.values(), key=lambda r: int(r["seq"]))
        res.doubts = [{k: row.get(k) for k in _DOUBT_KEYS} for row in doubted]
        res.config = self.config
        named = self.named.get(self.established.get("version"))
        pushed = self.sent if self.sent is not None else self.established  # took its refs
        if named is not None and int(named["seq"]) > int(pushed["seq"]):
            res.policies_by = _entry(named)
        else:
            named = self.established
        res.policies = [dict(p) for p in named.get("policies") or ()]
        res.established_by = _entry(self.established)
        res.status = self.meaning
        res.sent_by = None if self.sent is None else _entry(self.sent)
        return res

    def step(self, row: Mapping[str, Any]) -> None:
        cause, status, version = row.get("cause"), row.get("status"), row.get("version")
        delta = row.get("delta") or {}
        if row is self.rows[0]:
            self.check(row, self.config)
            ready = [a for a in self.answers.get(1, ()) if _is_connect(a)]
            if ready:
                self.establish(row, "connect parameters; not yet acknowledged at that instant "
                               f"(the upstream's answer is seq {ready[0]['seq']})")  # fmt: skip
            else:
                self.establish(row, self._unanswered("connect parameters"))
        elif cause == "upstream":  # (a Streaming v3 Warning no update explains)
            self.check(row, self.config)
            named = _doubted_fields(row)
            if named is None or named:  # (an old entry naming none: in doubt for good)
                self.doubts[("upstream", row["seq"])] = row
                self.doubted[("upstream", row["seq"])] = named
            self.note(row, f"{row.get('error')}; the config is kept as recorded, in doubt")
        elif cause == "client":
            if status in ("sent", "acked"):
                self.config = apply(self.config, delta)
                self._settle(delta)
                self.check(row, self.config)
                self.establish(row, "the client's own update, forwarded to the upstream"
                               if status == "sent" else
                               "the client's own update, acknowledged by the upstream")  # fmt: skip
            else:
                self.check(row, self.config)
                self.note(row, "the client's update was refused; nothing changed")
        elif status == "sent":
            candidate = apply(self.config, delta)
            self.check(row, candidate)
            answered = any(a["seq"] > row["seq"] for a in self.answers.get(version, ()))
            if row.get("error"):
                self.note(row, f"version {version} was pushed with a note: {row['error']}")
            if answered:
                self.pending[version] = (candidate, row)
            else:
                self.config = candidate
                if not self.acknowledging:  # (acknowledging: in flight, doubts stay until answered)
                    self._settle(delta)
                self.establish(row, self._unanswered("pushed"))
        elif status in ("acked", "unverified"):
            self._answer(row, status)
        elif status == "rejected" and _is_connect(row) and version not in self.pending:
            self.check(row, self.config)  # the Voice Agent's session.error to the connect
            # (or a gateway connect that reached no upstream: "not connected: ...")
            never = str(row.get("error") or "").startswith("not connected:")
            who = "never reached an upstream session" if never else "refused by the upstream"
            said = "the connect never reached an upstream session" if never else (
                "the upstream refused the connect")  # fmt: skip
            self.note(row, f"{said} ({row.get('error')}): no upstream session runs its "
                      "parameters")  # fmt: skip
            if self.established is self.rows[0]:
                self.establish(self.rows[0], f"connect parameters, {who} (seq {row['seq']}): "
                               "no upstream session runs them")  # fmt: skip
        elif status == "rejected":
            self.doubts.pop(("push", version), None)  # (a late refusal: known not applied)
            self.doubted.pop(("push", version), None)
            candidate, _ = self.pending.pop(version, (apply(self.config, delta), None))
            self.check(row, candidate)
            self.note(row, f"version {version} was rejected ({row.get('error')}): the previous "
                      "config stayed in effect")  # fmt: skip
        elif status == "unchanged":
            self.check(row, self.config)
            self.named[version] = row
            if row.get("error"):
                self.note(row, f"version {version}: nothing sent: {row['error']}")
        elif status == "skipped":
            self.config = apply(self.config, delta)
            self.check(row, self.config)
            self.establish(row, "skipped: nothing was sent (the model does not take these "
                           "fields); the engine counts them as applied")  # fmt: skip

    def _answer(self, row: Mapping[str, Any], status: str) -> None:
        version = row.get("version")
        held = self.pending.pop(version, None)
        if held is None and _is_connect(row) and status == "acked" and row.get("delta"):
            # the Voice Agent's session.ready to a session.resume: the resumed session's
            # configuration, as the upstream echoed it (the connect recorded none)
            self.config = apply(self.config, row["delta"])
            self.check(row, self.config)
            self.establish(row, "the resumed session's configuration, as the upstream's "
                           f"session.ready echoed it (seq {row['seq']})")  # fmt: skip
            return
        if held is None and _is_connect(row):  # the Voice Agent's session.ready
            self.check(row, self.config)
            if status != "acked":
                self.note(row, f"the connect is unverified: {row.get('error')}")
                self.doubts[("connect", 1)] = row
            else:
                self.doubts.pop(("connect", 1), None)
            if self.established is not self.rows[0]:
                return
            if status == "acked":
                self.establish(self.rows[0], "connect parameters, acknowledged by the upstream "
                               f"(session ready, seq {row['seq']})")  # fmt: skip
            else:
                answer = f"seq {row['seq']}: {row.get('error')}"
                self.establish(self.rows[0], "connect parameters; the upstream's answer did "
                               f"not confirm them ({answer})")  # fmt: skip
            return
        candidate, sent = held if held is not None else (apply(self.config, row.get("delta") or {}),
                                                         None)  # fmt: skip
        applied = row.get("error") is None or str(row["error"]).startswith(LATE_ANSWER)
        if status == "acked" or applied:
            # applied on what runs at the answer: a client update acknowledged between the
            # push's `sent` and this answer is kept (the engine hashes that config)
            now = apply(self.config, row.get("delta") or {})
            if config_hash(now) == row.get("config_hash"):
                candidate = now
        self.check(row, candidate)
        if status == "acked" or applied:
            self.doubts.pop(("push", version), None)  # (a late answer resolves it)
            self.doubted.pop(("push", version), None)
            self._settle(row.get("delta") or {})
        else:
            self.doubts[("push", version)] = row
            if row.get("delta"):  # (until later updates set each of its fields again)
                self.doubted[("push", version)] = set(row["delta"])
        if status == "acked":
            self.config = candidate
            self.establish(row, f"acknowledged by the upstream (version {version})", sent)
        elif applied:  # (an app's report; a late one, after the acknowledgement timeout)
            self.config = candidate
            self.establish(row, "applied as the app reported; not acknowledged (the protocol "
                           "has none)", sent)  # fmt: skip
        else:
            self.note(row, f"version {version}: {row.get('error')}; the previous config is "
                      "kept (the upstream may or may not have applied it)")  # fmt: skip

    def _settle(self, fields: Mapping[str, Any]) -> None:
        """An update setting ``fields`` took effect: an ``upstream`` doubt ends once every
        field it named was set again (what the session view's ``in_doubt`` says)."""
        for key, named in list(self.doubted.items()):
            if named is None:
                continue
            named.difference_update(fields)
            if not named:
                del self.doubted[key]
                self.doubts.pop(key, None)

    def _unanswered(self, what: str) -> str:
        if self.acknowledging:
            return f"{what}; sent, no acknowledgement recorded for it"
        return f"{what}; sent, not acknowledged (the protocol has none)"

    def note(self, row: Mapping[str, Any], text: str) -> None:
        self.result.notes.append(f"seq {row.get('seq')}: {text}")

"""The version log's hash chain: entries, canonical JSON, sealing and verification.

Every config version a session receives (and every status change of it) is one append-only
``LogEntry`` (DESIGN §4 plus ``version``). Entries of a session form a chain::

    hash = sha256(prev_hash + canonical_json(entry without "hash"))   # hex digests
    prev_hash of seq 1 = "0" * 64;  seq = 1, 2, 3, ... per session

A stored entry is one line: the canonical JSON of the entry without ``hash`` with
``"hash":"<hex>"`` appended as its last member, so the hashed bytes are the line minus that
member (``seal`` builds it; the file and Redis backends store the same line).
``verify_entries`` checks one session's stored entries against the chain. Pure: no I/O.

The entry that starts a session (``cause="connect"``, ``version=1``, ``status="sent"``) also
carries ``config``, the full configuration the upstream starts on, so the configuration at any
later instant can be rebuilt from the log (``sessions.config_at``). It is hashed like every
other member; entries without it (every other entry, and connect entries written before it
existed) are stored and hashed without the key, so they verify as they always did.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

from policies.values import value
from sessions.errors import VersionLogError

__all__ = [
    "GENESIS",
    "Canonical",
    "EntryTemplate",
    "LogEntry",
    "VerifyReport",
    "canonical_json",
    "config_hash",
    "seal",
    "seqs_text",
    "session_text",
    "verify_entries",
]

GENESIS: Final = "0" * 64

_encode_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


# what the canonical encoder does with a str (ensure_ascii=False)
_encode_text: Final = json.encoder.encode_basestring
# copied for each sealed entry (hashlib.sha256() itself fetches the digest from OpenSSL)
_SHA256: Final = hashlib.sha256()


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8, tuples as lists, no NaN/Infinity."""
    return _encode_canonical(obj).encode()


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of an effective config."""
    return hashlib.sha256(canonical_json(config)).hexdigest()


@value
class LogEntry:
    """One version log entry (DESIGN §4 plus ``version``). JSON-native values throughout."""

    seq: int
    at: float
    session_id: str
    version: int
    cause: str
    policies: tuple[dict[str, Any], ...]  # {"id", "version", "variant"}
    delta: dict[str, Any] | None  # canonical delta; a None value unsets the field
    wire: dict[str, Any] | None  # the exact message sent, if one was
    status: str
    error: str | None
    config_hash: str
    prev_hash: str
    hash: str
    config: dict[str, Any] | None = None  # connect entries only: the full starting config

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["policies"] = list(self.policies)
        if self.config is None:
            del out["config"]  # absent, not null: exactly the members that were hashed
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LogEntry:
        try:
            return cls(
                seq=int(raw["seq"]),
                at=float(raw["at"]),
                session_id=str(raw["session_id"]),
                version=int(raw["version"]),
                cause=str(raw["cause"]),
                policies=tuple(dict(p) for p in raw["policies"]),
                delta=None if raw["delta"] is None else dict(raw["delta"]),
                wire=None if raw["wire"] is None else dict(raw["wire"]),
                status=str(raw["status"]),
                error=None if raw["error"] is None else str(raw["error"]),
                config_hash=str(raw["config_hash"]),
                prev_hash=str(raw["prev_hash"]),
                hash=str(raw["hash"]),
                config=None if raw.get("config") is None else dict(raw["config"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VersionLogError(f"malformed log entry: {exc!r}") from exc


_OPTIONAL_KEYS: Final = frozenset({"config"})
_ENTRY_KEYS: Final = frozenset(f.name for f in fields(LogEntry)) - _OPTIONAL_KEYS


def seal(body: dict[str, Any]) -> tuple[LogEntry, bytes]:
    """Hash a chained body (every field but ``hash``); returns the entry and its JSONL line."""
    hashed = canonical_json(body)
    digest = hashlib.sha256(body["prev_hash"].encode() + hashed).hexdigest()
    body["hash"] = digest
    body["policies"] = tuple(body["policies"])
    return LogEntry(**body), b'%s,"hash":"%s"}\n' % (hashed[:-1], digest.encode())


@dataclass(frozen=True, slots=True)
class Canonical:
    """A JSON-native value with its canonical JSON text, encoded once.

    A fan-out logs the same delta, wire message and policy list for thousands of sessions;
    wrapping them once lets every entry reuse the text. Immutable by contract: nothing may
    change ``value`` after it is wrapped (``sessions.versionlog.core.canonical`` wraps a copy).
    """

    value: Any
    text: str

    @classmethod
    def of_plain(cls, value: Any) -> Canonical:
        """Wrap a JSON-native value (dicts, lists, scalars) the caller will not change."""
        return cls(value, _encode_canonical(value))


class EntryTemplate:
    """The members a run of entries shares, encoded and joined once: a fan-out logs one
    policy version for thousands of sessions, whose entries differ only in ``at``,
    ``prev_hash``, ``seq``, ``session_id`` and ``version``. ``seal`` fills those in.
    ``cause``/``status`` must be known (ASCII) words and ``config_hash`` a hex digest;
    ``config`` is the connect entry's optional member."""

    __slots__ = ("_head", "_status", "_tail", "_version")

    def __init__(
        self,
        *,
        cause: str,
        config: Canonical | None,
        config_hash: str,
        delta: Canonical | None,
        error: str | None,
        policies: Canonical,
        status: str,
        wire: Canonical | None,
    ) -> None:
        starting = '"' if config is None else '","config":' + config.text
        self._head = "".join((
            ',"cause":"', cause, starting, ',"config_hash":"', config_hash,
            '","delta":', "null" if delta is None else delta.text,
            ',"error":', "null" if error is None else _encode_text(error),
            ',"policies":', policies.text,
            ',"prev_hash":"',
        )).encode()  # fmt: skip
        self._status = (',"status":"' + status + '","version":').encode()
        self._tail = (',"wire":' + ("null" if wire is None else wire.text)).encode()  # no "}"
        self._version = (0, b"0")  # the last version and its digits (a run shares it)

    def seal(
        self, at: float, prev_hash: str, seq: int, session_id: str, version: int
    ) -> tuple[str, bytes]:
        """The hash and the stored line of this template's entry for one session: the same
        bytes as ``seal`` of the equivalent body (property-tested)."""
        return self.seal_encoded(at, prev_hash, seq, session_text(session_id), version)

    def seal_encoded(
        self, at: float, prev_hash: str, seq: int, session_id_text: bytes, version: int
    ) -> tuple[str, bytes]:
        """``seal`` with the session id already encoded as its JSON string
        (``session_text``: a log encodes each session's id once, not once per entry)."""
        if not math.isfinite(at):
            raise ValueError(f"Out of range float values are not JSON compliant: {at!r}")
        # Hot path (one call per session of a fan-out): the members shared by the run are
        # UTF-8 already, the body is joined once, the hash is fed the pieces (no concatenated
        # copy) from a copy of an empty context (a new one costs OpenSSL a digest fetch).
        digits = self._version
        if digits[0] != version:
            digits = self._version = (version, b"%d" % version)
        prev = prev_hash.encode()
        body = b"".join((
            b'{"at":', float.__repr__(at).encode(), self._head, prev,
            b'","seq":%d,"session_id":' % seq, session_id_text,
            self._status, digits[1], self._tail,
        ))  # fmt: skip
        h = _SHA256.copy()
        h.update(prev)
        h.update(body)
        h.update(b"}")
        digest = h.hexdigest()
        return digest, b'%b,"hash":"%b"}\n' % (body, digest.encode())


def session_text(session_id: str) -> bytes:
    """A session id as the entry's JSON string member (UTF-8)."""
    return _encode_text(session_id).encode()


def _hash_of(row: Mapping[str, Any]) -> str | None:
    try:
        body = {k: v for k, v in row.items() if k != "hash"}
        return hashlib.sha256(str(row["prev_hash"]).encode() + canonical_json(body)).hexdigest()
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of checking one session's chain. ``kind`` is edited, deleted, inserted,
    reordered, truncated, rewritten or malformed; ``problem`` starts with it and names the
    seqs. ``covered_seq``: the highest seq a valid signed checkpoint commits to and the log
    matches (``sessions.checkpoints``), None when no checkpoint covers the session."""

    ok: bool
    session_id: str
    count: int
    first_bad_seq: int | None = None
    problem: str | None = None
    kind: str | None = None
    covered_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    prev: str
    hash: str
    session_id: str
    intact: bool  # its content matches its own hash
    wellformed: bool = True


_MALFORMED: Final = _Row(-1, "", "", "", intact=False, wellformed=False)


def _row(raw: Any) -> _Row:
    if not isinstance(raw, Mapping) or not raw.keys() >= _ENTRY_KEYS:
        return _MALFORMED
    seq, prev, digest, sid = raw["seq"], raw["prev_hash"], raw["hash"], raw["session_id"]
    if type(seq) is not int or not all(isinstance(v, str) for v in (prev, digest, sid)):
        return _MALFORMED
    return _Row(seq, prev, digest, sid, _hash_of(raw) == digest)


def verify_entries(
    session_id: str,
    entries: Sequence[Mapping[str, Any]],
    *,
    tail: tuple[int, str] | None = None,
) -> VerifyReport:
    """Check one session's stored entries (in stored order) against the hash chain.

    The genuine chain is rebuilt by following hash links from the genesis hash (intact
    entries only); the first stored position that disagrees with it is classified. ``tail``
    (seq, hash) is what the writer last appended, if known: it also catches deletion of the
    newest entries, which a chain alone cannot see.
    """
    rows = [_row(raw) for raw in entries]
    count = len(rows)

    def bad(kind: str, seq: int, text: str) -> VerifyReport:
        return VerifyReport(False, session_id, count, seq, f"{kind}: {text}", kind)

    links: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.intact and row.session_id == session_id:
            links.setdefault(row.prev, []).append(i)

    def successors(digest: str, seq: int) -> list[int]:
        return [i for i in links.get(digest, ()) if rows[i].seq == seq]

    def continues(i: int) -> bool:
        return bool(successors(rows[i].hash, rows[i].seq + 1))

    chain: list[int] = []
    digest = GENESIS
    while candidates := successors(digest, len(chain) + 1):
        # a fork means an inserted twin: prefer the candidate the rest of the chain follows
        best = min(candidates, key=lambda i: (not continues(i), i))
        chain.append(best)
        digest = rows[best].hash
    in_chain = set(chain)
    chain_seqs = range(1, len(chain) + 1)

    for pos, row in enumerate(rows):
        if pos < len(chain) and chain[pos] == pos:
            continue
        expected = pos + 1
        if not row.wellformed:
            return bad("malformed", expected, f"entry at position {expected} is not a log entry")
        if row.session_id != session_id:
            return bad("inserted", row.seq, f"seq {row.seq} belongs to {row.session_id!r}")
        if pos in in_chain:
            return bad("reordered", expected, f"seq {expected} is stored after seq {row.seq}")
        if row.seq in chain_seqs:  # the chain already has this seq: this one is a twin
            return bad("inserted", row.seq, f"a second entry with seq {row.seq}")
        if not row.intact:
            claims = "" if row.seq == expected else f" (it claims seq {row.seq})"
            return bad("edited", expected, f"seq {expected} does not match its hash{claims}")
        if row.seq == expected:
            if pos == 0:
                return bad("edited", 1, "seq 1 does not start from the genesis hash")
            return bad(
                "edited",
                pos,
                f"seq {pos} was changed and re-hashed (seq {expected}'s prev_hash differs)",
            )
        if row.seq > expected and len(chain) > pos:
            return bad("inserted", row.seq, f"unexpected seq {row.seq} before seq {expected}")
        if row.seq > expected:
            gap = seqs_text(expected, row.seq - 1)
            return bad("deleted", expected, f"{gap} missing before seq {row.seq}")
        return bad("inserted", row.seq, f"unexpected seq {row.seq} after seq {pos}")
    if tail is not None:
        last_seq, last_hash = tail
        if count < last_seq:
            return bad(
                "truncated", count + 1, f"{seqs_text(count + 1, last_seq)} missing at the end"
            )
        if count == last_seq and count and rows[-1].hash != last_hash:
            return bad("edited", count, f"seq {count} differs from what was appended")
    return VerifyReport(True, session_id, count)


def seqs_text(first: int, last: int) -> str:
    """``seq 3`` or ``seqs 3-7``: how a report names a run of entries."""
    return f"seq {first}" if first == last else f"seqs {first}-{last}"

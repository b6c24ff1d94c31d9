"""Signed checkpoints of the version log: what a hash chain alone cannot prove.

A per-session hash chain detects an edited, inserted, reordered or deleted entry in the
middle, but not the deletion of a session's newest entries (the shorter chain is still a
valid chain), nor a rewrite that re-hashes every entry after the edited one. A checkpoint
commits, under an Ed25519 signature, to the chain heads ``(session_id, seq, hash)`` of every
session that changed since the previous checkpoint, and to the previous checkpoint's hash, so
checkpoints form a chain of their own (one per writer node)::

    {"type": "checkpoint", "node": "cp-0", "seq": 7, "at": 1790000000.25,
     "prev": "<hash of checkpoint 6, or 64 zeros>",
     "heads": {"<session id>": [<seq>, "<entry hash>"], ...},
     "key_id": "<sha256 hex of the raw public key>", "public_key": "<base64 raw 32 bytes>",
     "signature": "<base64 Ed25519 signature of canonical_json(every member above)>",
     "hash": "<sha256 hex of canonical_json(every member but hash)>"}

A record holds at most ``MAX_HEADS`` heads and about ``MAX_RECORD_BYTES`` of them (session ids
are up to 128 characters of any plane: 2,000 such heads made one 1.2 MB record, close to
CP_AUDIT's 1 MiB message limit even compressed, over it for a server with a smaller
``max_payload``, and a record cannot be split once signed); more make consecutive records.
Verification (``verify_checkpoints``): each record is well formed, matches its ``hash``, is
signed by a trusted key (pinned keys, or the key the record publishes: "the key published with
the trail", which proves consistency, not origin), and chains to the previous record of its
chain (one chain per node and key: a replica with a new key starts at #1). ``check_heads`` then
requires every committed head to exist in the log with that hash. Pure: no I/O (the file
backend and the NATS adapter read and write records).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sessions.versionchain import GENESIS, VerifyReport, canonical_json, seqs_text

__all__ = [
    "CHECKPOINT_TYPE",
    "MAX_HEADS",
    "MAX_RECORD_BYTES",
    "BadCheckpoint",
    "CheckpointReport",
    "CheckpointSigner",
    "Commit",
    "check_heads",
    "is_checkpoint",
    "key_id",
    "load_private_key",
    "load_public_key",
    "make_checkpoints",
    "public_key_pem",
    "verify_checkpoints",
]

CHECKPOINT_TYPE: Final = "checkpoint"
MAX_HEADS: Final = 2000  # ~220 KB per record of ordinary ids
MAX_RECORD_BYTES: Final = 256 * 1024  # heads per record, in bytes: well under 1 MiB
_MAX_PROBLEMS: Final = 100
_UNSIGNED: Final = ("signature", "hash")


def key_id(public_raw: bytes) -> str:
    """sha256 hex of the raw 32-byte public key."""
    return hashlib.sha256(public_raw).hexdigest()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64_32(text: bytes, what: str) -> bytes:
    try:
        raw = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: neither PEM nor base64") from None
    if len(raw) != 32:
        raise ValueError(f"{what}: base64 must hold 32 raw bytes, not {len(raw)}")
    return raw


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8, unencrypted) or base64 of the raw 32 bytes.
    Errors never quote the key material."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text, password=None)
        except (ValueError, TypeError):
            raise ValueError("signing key: unreadable PEM (or encrypted)") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("signing key: not an Ed25519 private key")
        return key
    return Ed25519PrivateKey.from_private_bytes(_b64_32(text, "signing key"))


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or base64 of the raw 32 bytes."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except (ValueError, TypeError):
            raise ValueError("public key: unreadable PEM") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("public key: not an Ed25519 public key")
        return key
    return Ed25519PublicKey.from_public_bytes(_b64_32(text, "public key"))


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class CheckpointSigner:
    """Holds the private key; exposes only what checkpoints publish (never the key)."""

    __slots__ = ("_key", "key_id", "public_b64", "public_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key()
        raw = _raw_public(self.public_key)
        self.key_id = key_id(raw)
        self.public_b64 = base64.b64encode(raw).decode()

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._key.sign(data)).decode()

    def __repr__(self) -> str:
        return f"CheckpointSigner(key_id={self.key_id[:16]}…)"


def is_checkpoint(row: Mapping[str, Any]) -> bool:
    return row.get("type") == CHECKPOINT_TYPE


def make_checkpoints(
    signer: CheckpointSigner,
    *,
    node: str,
    at: float,
    prev: tuple[int, str],
    heads: Mapping[str, tuple[int, str]],
    max_heads: int = MAX_HEADS,
    max_bytes: int = MAX_RECORD_BYTES,
) -> tuple[list[bytes], tuple[int, str]]:
    """Signed records (JSONL lines) committing to ``heads``, chained onto ``prev`` (seq, hash
    of this node's last checkpoint; ``(0, GENESIS)`` for the first). Returns the lines and the
    new ``prev``. A record takes at most ``max_heads`` heads and, past its first, no head that
    would take its heads over ``max_bytes`` (UTF-8, as written). Cost: O(heads log heads) plus
    one signature per record."""
    seq, digest = prev
    ordered = sorted(heads.items())
    lines: list[bytes] = []
    for part in _parts(ordered, max_heads, max_bytes):
        seq += 1
        body: dict[str, Any] = {
            "at": at,
            "heads": {sid: [s, h] for sid, (s, h) in part},
            "key_id": signer.key_id,
            "node": node,
            "prev": digest,
            "public_key": signer.public_b64,
            "seq": seq,
            "type": CHECKPOINT_TYPE,
        }
        body["signature"] = signer.sign(canonical_json(body))
        signed = canonical_json(body)
        digest = hashlib.sha256(signed).hexdigest()
        lines.append(b'%s,"hash":"%s"}\n' % (signed[:-1], digest.encode()))
    return lines, (seq, digest)


def _parts(
    ordered: Sequence[tuple[str, tuple[int, str]]], max_heads: int, max_bytes: int
) -> list[Sequence[tuple[str, tuple[int, str]]]]:
    parts: list[Sequence[tuple[str, tuple[int, str]]]] = []
    start, size = 0, 0
    for i, (sid, (_, head_hash)) in enumerate(ordered):
        # quotes, seq, brackets and separators: 16
        cost = len(sid.encode("utf-8", "surrogatepass")) + len(head_hash) + 16
        if i > start and (i - start >= max_heads or size + cost > max_bytes):
            parts.append(ordered[start:i])
            start, size = i, 0
        size += cost
    if start < len(ordered):
        parts.append(ordered[start:])
    return parts


# -- verification --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Commit:
    """A head a valid checkpoint commits to."""

    session_id: str
    seq: int
    hash: str
    node: str
    checkpoint: int  # the checkpoint's seq in its node's chain


@dataclass(frozen=True, slots=True)
class BadCheckpoint:
    """``kind``: malformed, edited, untrusted, signature, deleted, reordered or inserted."""

    node: str | None
    seq: int | None
    kind: str
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class CheckpointReport:
    ok: bool
    count: int
    trust: str  # "pinned" (keys given by the verifier) or "trail" (the keys records publish)
    trusted: dict[str, list[str]]  # node (or "*" when pinned) -> trusted key ids
    nodes: dict[str, dict[str, Any]]  # node -> {"count", "last_seq", "key_ids"}
    first_bad: BadCheckpoint | None = None
    problems: tuple[BadCheckpoint, ...] = ()
    commits: dict[str, list[Commit]] = field(default_factory=dict)  # ascending seq

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "count": self.count,
            "trust": self.trust,
            "trusted_keys": self.trusted,
            "nodes": self.nodes,
            "first_bad": None if self.first_bad is None else self.first_bad.to_dict(),
            "problems": [p.to_dict() for p in self.problems],
        }


@dataclass(frozen=True, slots=True)
class _Record:
    node: str
    seq: int
    prev: str
    hash: str
    key_id: str
    public_key: str
    signature: str
    heads: dict[str, Any]
    intact: bool  # its content matches its own hash


def _record(row: Any) -> _Record | None:
    if not isinstance(row, Mapping) or row.get("type") != CHECKPOINT_TYPE:
        return None
    node, seq, heads = row.get("node"), row.get("seq"), row.get("heads")
    texts = [row.get(k) for k in ("prev", "hash", "key_id", "public_key", "signature")]
    if not isinstance(node, str) or type(seq) is not int or not isinstance(heads, dict):
        return None
    if not all(isinstance(t, str) for t in texts):
        return None
    prev, digest, kid, pub, sig = (str(t) for t in texts)
    body = {k: v for k, v in row.items() if k != "hash"}
    try:
        intact = hashlib.sha256(canonical_json(body)).hexdigest() == digest
    except (TypeError, ValueError):
        intact = False
    return _Record(node, seq, prev, digest, kid, pub, sig, heads, intact)


def _signature_ok(row: Mapping[str, Any], key: Ed25519PublicKey, signature: str) -> bool:
    body = {k: v for k, v in row.items() if k not in _UNSIGNED}
    try:
        key.verify(base64.b64decode(signature, validate=True), canonical_json(body))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    return True


def _commits(rec: _Record) -> list[Commit] | None:
    out = []
    for sid, head in rec.heads.items():
        if not (isinstance(head, list) and len(head) == 2 and type(head[0]) is int):
            return None
        if not isinstance(head[1], str):
            return None
        out.append(Commit(sid, head[0], head[1], rec.node, rec.seq))
    return out


def _embedded_key(rec: _Record) -> Ed25519PublicKey | None:
    try:
        raw = base64.b64decode(rec.public_key, validate=True)
        if key_id(raw) != rec.key_id:
            return None
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        return None


def verify_checkpoints(
    rows: Iterable[Mapping[str, Any]],
    trusted: Sequence[Ed25519PublicKey] | None = None,
) -> CheckpointReport:
    """Check checkpoint records in stored order (see the module docstring).

    Each (node, key) is one chain: a replica that starts with a new key (an empty data
    directory, a rotated key) starts a new chain at #1. ``trusted``: public keys the verifier
    holds; None trusts each chain's own key ("published with the trail": consistency, not
    origin; the report lists every key seen per node). Heads of records with a valid signature
    are collected even when their chain is broken: a deleted middle checkpoint makes the next
    one unchained, not unauthentic.
    """
    pinned = None
    if trusted is not None:
        pinned = {key_id(_raw_public(k)): k for k in trusted}
    records: list[tuple[_Record | None, Mapping[str, Any]]] = []
    seen: set[tuple[str, int, str]] = set()
    for row in rows:
        rec = _record(row)
        if rec is not None:
            ident = (rec.node, rec.seq, rec.hash)
            if ident in seen:
                continue  # an exact re-shipped duplicate
            seen.add(ident)
        records.append((rec, row))
    stored: dict[tuple[str, str], list[int]] = {}  # chain (node, key id) -> seqs in order
    keys_of: dict[str, set[str]] = {}
    for rec, _ in records:
        if rec is not None:
            stored.setdefault((rec.node, rec.key_id), []).append(rec.seq)
            keys_of.setdefault(rec.node, set()).add(rec.key_id)

    problems: list[BadCheckpoint] = []
    commits: dict[str, list[Commit]] = {}
    nodes: dict[str, dict[str, Any]] = {}
    expect: dict[tuple[str, str], tuple[int, str]] = {}  # chain -> (next seq, prev hash)
    position: dict[tuple[str, str], int] = {}
    anchored: dict[tuple[str, str], bool] = {}
    current: list[str] = [""]  # the key id of the record being checked

    def bad(node: str | None, seq: int | None, kind: str, text: str) -> None:
        where = f"checkpoint {node} #{seq}" if node is not None else "a checkpoint record"
        if node is not None and len(keys_of.get(node, ())) > 1:
            where += f" (key {current[0][:16]}…)"
        if len(problems) < _MAX_PROBLEMS:
            problems.append(BadCheckpoint(node, seq, kind, f"{kind}: {where}: {text}"))

    for index, (rec, row) in enumerate(records):
        if rec is None:
            bad(None, None, "malformed", f"record {index + 1} is not a checkpoint")
            continue
        info = nodes.setdefault(rec.node, {"count": 0, "last_seq": 0, "key_ids": []})
        info["count"] += 1
        info["last_seq"] = max(info["last_seq"], rec.seq)
        if rec.key_id not in info["key_ids"]:
            info["key_ids"].append(rec.key_id)
        chain = (rec.node, rec.key_id)
        current[0] = rec.key_id
        position[chain] = position.get(chain, -1) + 1
        if position[chain] == 0:  # under trail trust only a chain from #1 vouches for its key
            anchored[chain] = pinned is not None or (rec.seq == 1 and rec.prev == GENESIS)
        valid = _check_record(rec, row, pinned, bad)
        if valid and anchored[chain]:
            found = _commits(rec)
            if found is None:
                bad(rec.node, rec.seq, "malformed", "a head is not [seq, hash]")
            else:
                for c in found:
                    commits.setdefault(c.session_id, []).append(c)
        seq_next, prev = expect.get(chain, (1, GENESIS))
        if rec.seq != seq_next or rec.prev != prev:
            later = set(stored[chain][position[chain] + 1 :])
            if rec.seq > seq_next:
                if later.issuperset(range(seq_next, rec.seq)):
                    bad(rec.node, rec.seq, "reordered", f"stored before #{seq_next}")
                elif position[chain] == 0 and len(keys_of[rec.node]) > 1:
                    bad(rec.node, rec.seq, "untrusted",
                        f"signed by key {rec.key_id[:16]}…, whose chain has no #1 to start "
                        f"from ({_nums(1, rec.seq - 1)} missing): a key this node never started "
                        "with, or its first checkpoints were deleted")  # fmt: skip
                else:
                    missing = _nums(seq_next, rec.seq - 1)
                    bad(rec.node, rec.seq, "deleted", f"{missing} missing before it")
            elif rec.seq < seq_next:
                bad(rec.node, rec.seq, "inserted", f"unexpected after #{seq_next - 1}")
            else:
                bad(rec.node, rec.seq, "edited",
                    f"chains to a checkpoint #{rec.seq - 1} other than the stored one")  # fmt: skip
        expect[chain] = (rec.seq + 1, rec.hash)

    for found in commits.values():
        found.sort(key=lambda c: (c.seq, c.node, c.checkpoint))
    trust = "trail" if pinned is None else "pinned"
    trusted_ids = (
        {node: list(info["key_ids"]) for node, info in sorted(nodes.items())}
        if pinned is None
        else {"*": sorted(pinned)}
    )
    count = sum(1 for rec, _ in records if rec is not None)
    return CheckpointReport(
        ok=not problems, count=count, trust=trust, trusted=trusted_ids, nodes=nodes,
        first_bad=problems[0] if problems else None, problems=tuple(problems), commits=commits,
    )  # fmt: skip


def _check_record(
    rec: _Record,
    row: Mapping[str, Any],
    pinned: dict[str, Ed25519PublicKey] | None,
    bad: Callable[[str | None, int | None, str, str], None],
) -> bool:
    """True when the record is intact and validly signed by a trusted key."""
    if not rec.intact:
        bad(rec.node, rec.seq, "edited", "its content does not match its hash")
        return False
    if pinned is not None:
        key = pinned.get(rec.key_id)
        if key is None:
            bad(rec.node, rec.seq, "untrusted",
                f"signed by key {rec.key_id[:16]}…, which is not a trusted key")  # fmt: skip
            return False
    else:
        key = _embedded_key(rec)
        if key is None:
            bad(rec.node, rec.seq, "edited", "its public_key does not match its key_id")
            return False
    if not _signature_ok(row, key, rec.signature):
        bad(rec.node, rec.seq, "signature",
            f"the signature does not verify under key {rec.key_id[:16]}…")  # fmt: skip
        return False
    return True


def check_heads(
    report: VerifyReport, rows: Sequence[Mapping[str, Any]], commits: Sequence[Commit]
) -> VerifyReport:
    """Add the checkpoint commitments to a session's chain report: every committed head must
    exist in the log with that hash. Catches deleted newest entries (``truncated``) and
    chains re-hashed after an edit (``rewritten``). ``rows`` are the session's stored rows."""
    if not commits or not report.ok:
        return report
    count = len(rows)
    covered = 0
    for c in commits:  # ascending seq
        where = f"checkpoint {c.node} #{c.checkpoint}"
        if c.seq > count:
            last = commits[-1]  # the newest commitment names everything that is gone
            text = (
                f"{seqs_text(count + 1, last.seq)} missing at the end (checkpoint {last.node} "
                f"#{last.checkpoint} committed seq {last.seq})"
            )
            return _bad(report, "truncated", count + 1, text, covered)
        if rows[c.seq - 1].get("hash") != c.hash:
            first = covered + 1
            text = (
                f"seq {c.seq} is not the entry {where} signed: the chain was re-hashed from "
                f"{'seq ' + str(first) if first == c.seq else f'a seq in {first}-{c.seq}'}"
            )
            return _bad(report, "rewritten", first, text, covered)
        covered = max(covered, c.seq)
    return replace(report, covered_seq=covered or None)


def _bad(report: VerifyReport, kind: str, seq: int, text: str, covered: int) -> VerifyReport:
    return replace(report, ok=False, first_bad_seq=seq, problem=f"{kind}: {text}", kind=kind,
                   covered_seq=covered or None)  # fmt: skip


def _nums(first: int, last: int) -> str:
    return f"checkpoint #{first}" if first == last else f"checkpoints #{first}-#{last}"

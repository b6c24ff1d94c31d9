"""Tampering with the JSONL trail on disk (entries and signed checkpoints) is detected and
named by ``controlplane audit verify --data-dir``; the untouched trail passes."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane import cli
from sessions.checkpoints import CheckpointSigner, public_key_pem
from sessions.clock import FakeClock
from sessions.versionchain import canonical_json
from sessions.versionlog.file import Checkpointing, FileVersionLog

SIGNER = CheckpointSigner(Ed25519PrivateKey.generate())
OTHER = CheckpointSigner(Ed25519PrivateKey.generate())

Lines = list[dict[str, Any]]


async def build(root: Path) -> Path:
    """s1: 4 entries (checkpointed after 2 and after 4), s2: 3 entries, s3: 1 entry:
    three checkpoints of node n1."""
    clock = FakeClock(1_790_000_000.0)
    log = FileVersionLog(root / "audit", clock, fsync=False, flush_interval_s=None,
                         checkpointing=Checkpointing(SIGNER, "n1", every_entries=10**6,
                                                     interval_s=3600))  # fmt: skip
    await log.start()

    def add(sid: str, version: int, prompt: str) -> None:
        clock.advance(1)
        cause = "connect" if version == 1 else "policy"
        log.append(sid, version=version, cause=cause, status="sent", config={"prompt": prompt},
                   delta={} if version == 1 else {"prompt": prompt})  # fmt: skip

    for sid, version in (("s1", 1), ("s1", 2), ("s2", 1), ("s2", 2)):
        add(sid, version, f"{sid}-v{version}")
    await log.flush()
    assert await log.checkpoint() == 1
    for sid, version in (("s1", 3), ("s1", 4), ("s2", 3)):
        add(sid, version, f"{sid}-v{version}")
    await log.flush()
    assert await log.checkpoint() == 1
    add("s3", 1, "s3-v1")
    await log.close()  # the last checkpoint
    return root


def entry_file(root: Path) -> Path:
    (path,) = (root / "audit").glob("versionlog-*.jsonl")
    return path


def checkpoint_file(root: Path) -> Path:
    (path,) = (root / "audit").glob("checkpoints-*.jsonl")
    return path


def read(path: Path) -> Lines:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write(path: Path, rows: Lines) -> None:
    path.write_text("".join(canonical_json(r).decode() + "\n" for r in rows))


def find(rows: Lines, sid: str, seq: int) -> int:
    return next(i for i, r in enumerate(rows) if r.get("session_id") == sid and r["seq"] == seq)


def rehash_chain(rows: Lines, sid: str, start: int) -> None:
    """What a careful forger does: re-hash every entry of ``sid`` from seq ``start`` on."""
    prev = rows[find(rows, sid, start - 1)]["hash"]
    for row in rows:
        if row.get("session_id") == sid and row["seq"] >= start:
            row["prev_hash"] = prev
            body = {k: v for k, v in row.items() if k != "hash"}
            row["hash"] = prev = hashlib.sha256(prev.encode() + canonical_json(body)).hexdigest()


def resign(row: dict[str, Any], signer: CheckpointSigner) -> dict[str, Any]:
    body = {k: v for k, v in row.items() if k not in ("hash", "signature")}
    body["key_id"], body["public_key"] = signer.key_id, signer.public_b64
    body["signature"] = signer.sign(canonical_json(body))
    return {**body, "hash": hashlib.sha256(canonical_json(body)).hexdigest()}


# -- tampering with entries ---------------------------------------------------------------------


def edit(rows: Lines) -> Lines:
    rows[find(rows, "s1", 2)]["delta"] = {"prompt": "forged"}
    return rows


def delete(rows: Lines) -> Lines:
    del rows[find(rows, "s1", 2)]
    return rows


def insert(rows: Lines) -> Lines:
    twin = dict(rows[find(rows, "s1", 2)], delta={"prompt": "forged"})
    rows.insert(find(rows, "s1", 3), twin)
    return rows


def reorder(rows: Lines) -> Lines:
    i, j = find(rows, "s1", 2), find(rows, "s1", 3)
    rows[i], rows[j] = rows[j], rows[i]
    return rows


def truncate_tail(rows: Lines) -> Lines:
    """Delete s1's two newest entries: the remaining chain is valid, checkpoint #2 is not."""
    return [r for r in rows if not (r["session_id"] == "s1" and r["seq"] >= 3)]


def rewrite(rows: Lines) -> Lines:
    rows[find(rows, "s1", 3)]["delta"] = {"prompt": "forged"}
    rehash_chain(rows, "s1", 3)
    return rows


def delete_session(rows: Lines) -> Lines:
    return [r for r in rows if r["session_id"] != "s2"]


ENTRY_CASES: list[tuple[str, Callable[[Lines], Lines], str]] = [
    ("edit", edit, "BROKEN  s1  first bad seq 2: edited: seq 2 does not match its hash"),
    ("delete", delete, "BROKEN  s1  first bad seq 2: deleted: seq 2 missing before seq 3"),
    ("insert", insert, "BROKEN  s1  first bad seq 2: inserted: a second entry with seq 2"),
    ("reorder", reorder, "BROKEN  s1  first bad seq 2: reordered: seq 2 is stored after seq 3"),
    ("truncate-tail", truncate_tail, "BROKEN  s1  first bad seq 3: truncated: seqs 3-4 missing "
     "at the end (checkpoint n1 #2 committed seq 4)"),
    ("rewrite", rewrite, "BROKEN  s1  first bad seq 3: rewritten: seq 4 is not the entry "
     "checkpoint n1 #2 signed: the chain was re-hashed from a seq in 3-4"),
    ("delete-session", delete_session, "BROKEN  s2  first bad seq 1: truncated: seqs 1-3 "
     "missing at the end (checkpoint n1 #2 committed seq 3)"),
]  # fmt: skip


# -- tampering with checkpoints -----------------------------------------------------------------


def edit_head(rows: Lines) -> Lines:
    rows[1]["heads"]["s1"][1] = "f" * 64
    return rows


def edit_signature(rows: Lines) -> Lines:
    """Another valid signature pasted in, the record's own hash recomputed."""
    body = {k: v for k, v in rows[1].items() if k != "hash"}
    body["signature"] = rows[0]["signature"]
    rows[1] = {**body, "hash": hashlib.sha256(canonical_json(body)).hexdigest()}
    return rows


def delete_middle(rows: Lines) -> Lines:
    return [rows[0], rows[2]]


def other_key(rows: Lines) -> Lines:
    rows[2] = resign(rows[2], OTHER)
    return rows


def forged_heads(rows: Lines) -> Lines:
    rows[1]["heads"]["s1"] = [2, rows[0]["heads"]["s1"][1]]
    rows[1] = resign(rows[1], OTHER)
    return rows


CHECKPOINT_CASES: list[tuple[str, Callable[[Lines], Lines], str]] = [
    ("edit-head", edit_head, "BAD CHECKPOINT  edited: checkpoint n1 #2: its content does not "
     "match its hash"),
    ("edit-signature", edit_signature, "BAD CHECKPOINT  signature: checkpoint n1 #2: the "
     f"signature does not verify under key {SIGNER.key_id[:16]}…"),
    ("delete-middle", delete_middle, "BAD CHECKPOINT  deleted: checkpoint n1 #3: checkpoint #2 "
     "missing before it"),
    ("other-key", other_key, f"BAD CHECKPOINT  untrusted: checkpoint n1 #3 (key "
     f"{OTHER.key_id[:16]}…): signed by key {OTHER.key_id[:16]}…, whose chain has no #1 to "
     "start from (checkpoints #1-#2 missing)"),
    ("forged-heads", forged_heads, f"BAD CHECKPOINT  untrusted: checkpoint n1 #2 (key "
     f"{OTHER.key_id[:16]}…)"),
]  # fmt: skip


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import asyncio

    return asyncio.run(build(tmp_path_factory.mktemp("pristine")))


def verify(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["audit", "verify", "--data-dir", str(root), *extra])
    return code, capsys.readouterr().out


def test_the_untampered_trail_verifies(pristine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = verify(pristine, capsys)
    assert code == 0, out
    assert "ok      s1  4 entries, checkpointed to seq 4" in out
    assert "ok      s3  1 entries, checkpointed to seq 1" in out
    assert f"the keys the trail itself publishes (n1: {SIGNER.key_id[:16]}…)" in out
    assert out.splitlines()[-1] == "3 chain(s) verified, 0 broken; 3 checkpoint(s), 0 bad"
    (pub,) = (pristine / "audit").glob("signing-key-*.pub")  # published next to the trail
    assert pub.read_bytes() == public_key_pem(SIGNER.public_key)
    code, out = verify(pristine, capsys, "--public-key", str(pub), "--json")
    answer = json.loads(out)
    assert code == 0 and answer["ok"] is True
    assert answer["checkpoints"]["trust"] == "pinned"
    assert answer["checkpoints"]["trusted_keys"] == {"*": [SIGNER.key_id]}


@pytest.mark.parametrize(("name", "tamper", "named"), ENTRY_CASES, ids=[c[0] for c in ENTRY_CASES])
def test_tampered_entries_are_named(
    name: str, tamper: Callable[[Lines], Lines], named: str, pristine: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = _verify_tampered(pristine, tmp_path / name, entry_file, tamper, capsys)
    assert named in out, out


@pytest.mark.parametrize(
    ("name", "tamper", "named"), CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES]
)
def test_tampered_checkpoints_are_named(
    name: str, tamper: Callable[[Lines], Lines], named: str, pristine: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = _verify_tampered(pristine, tmp_path / name, checkpoint_file, tamper, capsys)
    assert named in out, out
    assert "0 bad" not in out.splitlines()[-1]


def _verify_tampered(
    pristine: Path, root: Path, file_of: Callable[[Path], Path],
    tamper: Callable[[Lines], Lines], capsys: pytest.CaptureFixture[str],
) -> str:  # fmt: skip
    """Verify a copy of the pristine trail with one of its files tampered: must fail (1)."""
    shutil.copytree(pristine, root)
    path = file_of(root)
    write(path, tamper(read(path)))
    code, out = verify(root, capsys)
    assert code == 1, out
    return out


def test_a_trail_signed_by_another_key_fails_when_the_key_is_pinned(
    pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.pub"
    other.write_bytes(public_key_pem(OTHER.public_key))
    code, out = verify(pristine, capsys, "--public-key", str(other))
    assert code == 1
    assert f"untrusted: checkpoint n1 #1: signed by key {SIGNER.key_id[:16]}…, which is not a " \
        "trusted key" in out  # fmt: skip
    # none of its commitments is believed: the chains are not reported as covered
    assert "checkpointed to" not in out

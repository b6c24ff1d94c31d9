"""Signed checkpoints, pure: signing, verification of every tamper case, keys, heads."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sessions.checkpoints import (
    MAX_RECORD_BYTES,
    CheckpointSigner,
    Commit,
    check_heads,
    load_private_key,
    load_public_key,
    make_checkpoints,
    public_key_pem,
    verify_checkpoints,
)
from sessions.versionchain import GENESIS, canonical_json, verify_entries
from tests.unit.sessions.test_versionlog import chain

SIGNER = CheckpointSigner(Ed25519PrivateKey.generate())
OTHER = CheckpointSigner(Ed25519PrivateKey.generate())


def records(count: int = 3, signer: CheckpointSigner = SIGNER, node: str = "n1") -> list[Any]:
    """``count`` chained checkpoints of one node, each committing to one session's head."""
    prev: tuple[int, str] = (0, GENESIS)
    rows = []
    for i in range(count):
        lines, prev = make_checkpoints(signer, node=node, at=100.0 + i, prev=prev,
                                       heads={f"s{i}": (i + 1, f"{i:064x}")})  # fmt: skip
        rows += [json.loads(line) for line in lines]
    return rows


def rehash(row: dict[str, Any]) -> dict[str, Any]:
    """What a forger does after an edit: recompute the record's own hash."""
    body = {k: v for k, v in row.items() if k != "hash"}
    return {**body, "hash": hashlib.sha256(canonical_json(body)).hexdigest()}


def resign(row: dict[str, Any], signer: CheckpointSigner) -> dict[str, Any]:
    body = {k: v for k, v in row.items() if k not in ("hash", "signature")}
    body["key_id"], body["public_key"] = signer.key_id, signer.public_b64
    body["signature"] = signer.sign(canonical_json(body))
    return rehash(body)


def test_records_verify_and_commit_their_heads() -> None:
    rows = records(3)
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert rows[0]["prev"] == GENESIS and rows[1]["prev"] == rows[0]["hash"]
    report = verify_checkpoints(rows)
    assert report.ok and report.count == 3 and report.first_bad is None
    assert report.trust == "trail" and report.trusted == {"n1": [SIGNER.key_id]}
    assert report.commits["s1"] == [Commit("s1", 2, f"{1:064x}", "n1", 2)]
    pinned = verify_checkpoints(rows, [SIGNER.public_key])
    assert pinned.ok and pinned.trust == "pinned" and pinned.trusted == {"*": [SIGNER.key_id]}


def test_records_are_bounded_in_bytes_too_and_still_chain() -> None:
    """128 characters of a far plane per id (the control channel's longest): 2,000 heads
    were one record of 1.2 MB; now records stay under MAX_RECORD_BYTES and chain as before."""
    heads = {f"{i:04}" + chr(0x20000 + i) * 124: (1, f"{i:064x}") for i in range(2000)}
    lines, _ = make_checkpoints(SIGNER, node="n", at=1.0, prev=(0, GENESIS), heads=heads)
    assert len(lines) == 5 and all(len(line) < MAX_RECORD_BYTES + 4096 for line in lines)
    rows = [json.loads(line) for line in lines]
    assert sum(len(r["heads"]) for r in rows) == 2000
    report = verify_checkpoints(rows)
    assert report.ok and sorted(report.commits) == sorted(heads)
    one, _ = make_checkpoints(SIGNER, node="n", at=1.0, prev=(0, GENESIS),
                              heads={"x" * 128: (1, "0" * 64)}, max_bytes=10)  # fmt: skip
    assert len(one) == 1  # a head bigger than the bound still gets its record


def test_many_heads_make_several_chained_records() -> None:
    heads = {f"s{i:03}": (1, f"{i:064x}") for i in range(5)}
    lines, prev = make_checkpoints(SIGNER, node="n", at=1.0, prev=(0, GENESIS), heads=heads,
                                   max_heads=2)  # fmt: skip
    rows = [json.loads(line) for line in lines]
    assert [len(r["heads"]) for r in rows] == [2, 2, 1]
    assert prev == (3, rows[-1]["hash"])
    report = verify_checkpoints(rows)
    assert report.ok and sorted(report.commits) == sorted(heads)


def _edit_head(rows: list[Any]) -> list[Any]:
    rows[1]["heads"]["s1"][1] = "f" * 64
    return rows


def _edit_head_rehashed(rows: list[Any]) -> list[Any]:
    return [*rows[:1], rehash(_edit_head(rows)[1]), *rows[2:]]


def _edit_signature(rows: list[Any]) -> list[Any]:
    sig = bytearray(base64.b64decode(rows[1]["signature"]))
    sig[0] ^= 1
    rows[1]["signature"] = base64.b64encode(bytes(sig)).decode()
    return [*rows[:1], rehash(rows[1]), *rows[2:]]


def _other_key(rows: list[Any]) -> list[Any]:
    return [*rows[:1], resign(_edit_head(rows)[1], OTHER), *rows[2:]]


def _key_id_lies(rows: list[Any]) -> list[Any]:
    forged = resign(_edit_head(rows)[1], OTHER)
    forged["key_id"] = SIGNER.key_id  # claims the trusted key, carries its own
    return [*rows[:1], rehash(forged), *rows[2:]]


@pytest.mark.parametrize(
    ("tamper", "kind", "seq"),
    [
        (_edit_head, "edited", 2),
        (_edit_head_rehashed, "signature", 2),
        (_edit_signature, "signature", 2),
        (_other_key, "untrusted", 2),  # a chain of its own with no #1: not this node's key
        (_key_id_lies, "edited", 2),
        (lambda rows: [rows[0], rows[2]], "deleted", 3),
        (lambda rows: [rows[0], rows[2], rows[1]], "reordered", 3),
        (lambda rows: [*rows, rows[1] | {"hash": "0" * 64}], "edited", 2),
        (lambda rows: [rows[0], rows[1], {"type": "checkpoint"}, rows[2]], "malformed", None),
    ],
    ids=["edit-head", "edit-head-rehashed", "edit-signature", "other-key", "key-id-lies",
         "delete-middle", "reorder", "duplicate-seq", "malformed"],
)  # fmt: skip
def test_every_checkpoint_tamper_is_named(tamper: Any, kind: str, seq: int | None) -> None:
    report = verify_checkpoints(tamper(records(3)))
    assert not report.ok
    assert report.first_bad is not None
    assert (report.first_bad.kind, report.first_bad.seq) == (kind, seq)
    assert report.first_bad.problem.startswith(kind + ": ")
    if seq is not None:
        assert f"checkpoint n1 #{seq}" in report.first_bad.problem


def test_a_forgery_under_another_key_fails_pinned_and_trail_trust() -> None:
    forged = records(3, signer=OTHER)
    pinned = verify_checkpoints(forged, [SIGNER.public_key])
    assert pinned.first_bad is not None and pinned.first_bad.kind == "untrusted"
    assert not pinned.commits  # nothing an untrusted key signed is believed
    # trail trust: one chain per (node, key); a record under another key that starts no chain
    # of its own (a forged next checkpoint) is named
    mixed = [*records(2), resign(records(3)[2], OTHER)]
    report = verify_checkpoints(mixed)
    assert report.first_bad is not None
    assert (report.first_bad.kind, report.first_bad.seq) == ("untrusted", 3)
    assert f"signed by key {OTHER.key_id[:16]}…, whose chain has no #1" in (
        report.first_bad.problem
    )
    assert "s2" not in report.commits  # what it signed is not believed (no false accusation)
    # a replica that restarted with a new key (an empty data dir) starts a new chain at #1:
    # consistent under trail trust, listed; pinned, both keys are needed
    rotated = [*records(2), *records(2, signer=OTHER)]
    report = verify_checkpoints(rotated)
    assert report.ok and report.trusted == {"n1": [SIGNER.key_id, OTHER.key_id]}
    assert verify_checkpoints(rotated, [SIGNER.public_key, OTHER.public_key]).ok
    only_old = verify_checkpoints(rotated, [SIGNER.public_key])
    assert only_old.first_bad is not None
    assert (only_old.first_bad.kind, only_old.first_bad.seq) == ("untrusted", 1)
    assert "(key " in only_old.first_bad.problem  # two keys for n1: the key is named


def test_exact_duplicates_are_dropped_and_nodes_chain_separately() -> None:
    a, b = records(2, node="a"), records(2, node="b")
    report = verify_checkpoints([a[0], b[0], a[0], a[1], b[1]])
    assert report.ok and report.count == 4 and set(report.nodes) == {"a", "b"}


def test_check_heads_finds_truncation_and_rewritten_chains() -> None:
    rows = chain(6)
    ok = verify_entries("s", rows)
    commits = [Commit("s", 2, rows[1]["hash"], "n", 1), Commit("s", 5, rows[4]["hash"], "n", 2)]
    assert check_heads(ok, rows, commits).covered_seq == 5
    cut = rows[:3]
    truncated = check_heads(verify_entries("s", cut), cut, commits)
    assert (truncated.ok, truncated.kind, truncated.first_bad_seq) == (False, "truncated", 4)
    assert truncated.problem == (
        "truncated: seqs 4-5 missing at the end (checkpoint n #2 committed seq 5)"
    )
    assert truncated.covered_seq == 2
    # seq 4 edited, then 4-6 re-hashed: the chain alone is valid, the checkpoint is not
    forged = chain(6)
    forged[3]["delta"] = {"prompt": "forged"}
    prev = forged[2]["hash"]
    for row in forged[3:]:
        row["prev_hash"] = prev
        body = {k: v for k, v in row.items() if k != "hash"}
        row["hash"] = prev = hashlib.sha256(prev.encode() + canonical_json(body)).hexdigest()
    assert verify_entries("s", forged).ok
    rewritten = check_heads(verify_entries("s", forged), forged, commits)
    assert (rewritten.kind, rewritten.first_bad_seq) == ("rewritten", 3)
    assert rewritten.problem is not None and "seq 5 is not the entry" in rewritten.problem
    assert "a seq in 3-5" in rewritten.problem


def test_keys_load_from_pem_and_base64_and_errors_never_quote_them() -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())  # fmt: skip
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    want = CheckpointSigner(key).key_id
    assert CheckpointSigner(load_private_key(pem)).key_id == want
    assert CheckpointSigner(load_private_key(base64.b64encode(raw) + b"\n")).key_id == want
    public = key.public_key()
    raw_pub = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for text in (public_key_pem(public), base64.b64encode(raw_pub)):
        assert (
            load_public_key(text).public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            == raw_pub
        )
    secret = base64.b64encode(raw[:31])
    for bad in (secret, b"not a key at all", pem.replace(b"M", b"Q", 3)):
        with pytest.raises(ValueError) as caught:
            load_private_key(bad)
        assert secret.decode() not in str(caught.value)
        assert raw.hex() not in str(caught.value)
    assert "CheckpointSigner(key_id=" in repr(CheckpointSigner(key))
    assert raw.hex() not in repr(CheckpointSigner(key))

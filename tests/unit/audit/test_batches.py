"""The ``CP_AUDIT`` batch format (``controlplane.audit.batches``): lines in order, split only
at the size cap, the per-entry form of older stores still read, hostile payloads refused with
the limit named, message ids that dedupe a re-ship and nothing else."""

from __future__ import annotations

import json
import os
import zlib

import pytest

from controlplane.audit.batches import (
    ENCODING,
    ENCODING_HEADER,
    FILTER_HEADER,
    MAX_DECODED_BYTES,
    MAX_FILTER_BITS,
    BatchError,
    batch_id,
    may_hold,
    pack,
    session_filter,
    unpack,
)

HEADERS = {ENCODING_HEADER: ENCODING}


def _entries(n: int) -> list[bytes]:
    return [json.dumps({"seq": i, "session_id": f"s{i % 7}", "hash": os.urandom(32).hex(),
                        "delta": {"prompt": "alike " * 20}}, separators=(",", ":")).encode()
            for i in range(n)]  # fmt: skip


def test_one_payload_holds_a_fan_out_and_reads_back_in_order() -> None:
    lines = _entries(2000)
    [(payload, start, end)] = pack(lines, 1024 * 1024)
    assert (start, end) == (0, 2000)
    assert len(payload) < sum(map(len, lines)) / 2  # alike entries compress
    assert unpack(payload, HEADERS) == lines


def test_split_only_where_the_cap_requires_and_in_order() -> None:
    lines = _entries(3000)
    whole = len(pack(lines, 10**9)[0][0])
    parts = pack(lines, whole // 3)
    assert 3 <= len(parts) <= 8 and all(len(p) <= whole // 3 for p, _, _ in parts)
    assert [s for _, s, _ in parts] == [0, *[e for _, _, e in parts[:-1]]]
    assert [line for p, _, _ in parts for line in unpack(p, HEADERS)] == lines
    with pytest.raises(BatchError, match="does not fit in a message of 10 bytes"):
        pack(lines[:1], 10)


def test_the_per_entry_form_of_older_stores_reads_as_one_line() -> None:
    line = _entries(1)[0]
    assert unpack(line, None) == [line] and unpack(line, {"Nats-Msg-Id": "s0:1"}) == [line]


def test_hostile_payloads_are_refused_naming_the_limit() -> None:
    bomb = zlib.compress(b"x" * (1024 * 1024 + 1), 9)  # ~1 KB
    with pytest.raises(BatchError, match="inflates past 1048576 bytes"):
        unpack(bomb, HEADERS, limit=1024 * 1024)
    assert len(unpack(bomb, HEADERS)[0]) == 1024 * 1024 + 1 < MAX_DECODED_BYTES
    with pytest.raises(BatchError, match="does not decompress"):
        unpack(b"not zlib", HEADERS)
    with pytest.raises(BatchError, match="is not 'zlib'"):
        unpack(b"", {ENCODING_HEADER: "br"})


def test_the_message_id_is_the_position_and_the_content() -> None:
    a = batch_id("n1", "versionlog-x.jsonl:0", "versionlog-x.jsonl:900", b"abc")
    assert a.startswith("batch/n1/versionlog-x.jsonl:0..versionlog-x.jsonl:900/")
    assert a == batch_id("n1", "versionlog-x.jsonl:0", "versionlog-x.jsonl:900", b"abc")
    assert a != batch_id("n1", "versionlog-x.jsonl:0", "versionlog-x.jsonl:900", b"abd")
    assert a != batch_id("n2", "versionlog-x.jsonl:0", "versionlog-x.jsonl:900", b"abc")


@pytest.mark.parametrize("count", [1, 200, 3_333, 10_000])
def test_a_batch_filter_holds_its_sessions_and_few_others(count: int) -> None:
    ids = [f"cps_{os.urandom(16).hex()}" for _ in range(count)]
    value = session_filter(ids)
    assert len(value) <= MAX_FILTER_BITS // 6 + 16  # the header room nats_audit keeps
    headers = {FILTER_HEADER: value}
    assert all(may_hold(headers, sid) for sid in ids)  # never a missed session
    others = [f"cps_{os.urandom(16).hex()}" for _ in range(4000)]
    false = sum(may_hold(headers, sid) for sid in others)
    assert false <= 0.02 * len(others), (count, false)  # ~10 bits a session: ~1 % or less
    assert may_hold({FILTER_HEADER: session_filter(["é\ud800x"])}, "é\ud800x")  # any id


@pytest.mark.parametrize("headers", [None, {}, HEADERS, {FILTER_HEADER: "bloom1.!!!"},
                                     {FILTER_HEADER: "bloom2.AAAA"},
                                     {FILTER_HEADER: "bloom1." + "A" * 4}])  # fmt: skip
def test_a_batch_without_a_filter_it_can_read_is_always_fetched(
    headers: dict[str, str] | None,
) -> None:
    """Stores written before the filter, a newer form, or a damaged header: a reader never
    skips a batch it cannot rule out."""
    assert may_hold(headers, "s1")

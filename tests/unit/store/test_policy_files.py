"""The embedded policy store's files (``controlplane.intake.files``): written once and
atomically, replayed in version order, and a bad file stops the start instead of being skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.errors import Conflict, Unavailable
from controlplane.intake.bus import PolicyEvent
from controlplane.intake.files import DurableIntake, PolicyFiles, PolicyFilesCorrupt
from controlplane.intake.store import PolicyStore


def _event(version: int, kind: str = "policy.published", pid: str = "tone") -> PolicyEvent:
    doc = {"id": pid, "version": version, "set": {"system_prompt": f"v{version}"}}
    return PolicyEvent(kind, doc, "admin:abc123", "2026-12-06T23:00:00Z",  # type: ignore[arg-type]
                       event_id=f"e{version}{kind}")  # fmt: skip


def test_events_replay_per_policy_in_numeric_version_order_with_halts_after_their_version(
    tmp_path: Path,
) -> None:
    files = PolicyFiles(tmp_path / "policies")
    written = [_event(10), _event(2), _event(2, "policy.halted"), _event(1),
               _event(1, pid="other"), _event(3, "policy.retired")]  # fmt: skip
    for event in written:
        files.write(event)
    loaded = PolicyFiles(tmp_path / "policies").load()
    assert [(e.policy_id, e.version, e.type) for e in loaded] == [
        ("other", 1, "policy.published"),
        ("tone", 1, "policy.published"),
        ("tone", 2, "policy.published"),
        ("tone", 2, "policy.halted"),
        ("tone", 3, "policy.retired"),
        ("tone", 10, "policy.published"),
    ]
    assert loaded[2] == written[1]  # the whole event, actor and time included


def test_a_version_is_written_once_the_first_content_stays(tmp_path: Path) -> None:
    files = PolicyFiles(tmp_path / "policies")
    files.write(_event(1))
    other = PolicyEvent("policy.published", {"id": "tone", "version": 1, "set": {}}, "x", "t")
    with pytest.raises(Conflict) as refused:
        files.write(other)
    assert refused.value.code == "policy_store_conflict"
    assert "version 1 is already stored" in str(refused.value)
    (stored,) = files.load()
    assert stored.policy["set"] == {"system_prompt": "v1"}
    assert [p.name for p in (tmp_path / "policies" / "tone").iterdir()] == ["1.json"]


def test_a_write_the_disk_refuses_is_unavailable_and_names_the_store(tmp_path: Path) -> None:
    blocker = tmp_path / "policies"
    blocker.write_text("not a directory")
    with pytest.raises(Unavailable) as refused:
        PolicyFiles(blocker).write(_event(1))
    assert refused.value.code == "policy_store_unavailable"
    assert str(blocker) in str(refused.value) and refused.value.retryable


def test_a_write_interrupted_by_a_crash_leaves_nothing_that_replays(tmp_path: Path) -> None:
    files = PolicyFiles(tmp_path / "policies")
    files.write(_event(1))
    torn = tmp_path / "policies" / "tone" / ".tmp-2.json.4242"
    torn.write_text('{"type": "policy.publ')  # a crash between open and rename
    assert [e.version for e in files.load()] == [1]
    assert not torn.exists()


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("2.json", '{"type": "policy.publ', "cannot be read"),
        ("2.json", json.dumps(_event(3).to_json()), "not what its name says"),
        ("2.halted.json", json.dumps(_event(2).to_json()), "not what its name says"),
        ("notes.txt", "hello", "unexpected file"),
        ("2.json", "[" * 5000 + "]" * 5000, "nested deeper than 32 levels"),
        ("2.json", '{"policy": ' * 5000 + "1" + "}" * 5000, "nested deeper than 32 levels"),
    ],
    ids=["truncated", "other-version", "not-a-halt", "stray-file", "deep-array", "deep-object"],
)
def test_a_file_that_does_not_replay_stops_the_start_naming_it(
    tmp_path: Path, name: str, content: str, problem: str
) -> None:
    files = PolicyFiles(tmp_path / "policies")
    files.write(_event(1))
    (tmp_path / "policies" / "tone" / name).write_text(content)
    with pytest.raises(PolicyFilesCorrupt) as refused:
        files.load()
    assert problem in str(refused.value) and name in str(refused.value)
    assert refused.value.code == "policy_store_corrupt"


def test_a_missing_store_is_empty(tmp_path: Path) -> None:
    assert PolicyFiles(tmp_path / "nothing-yet").load() == []


async def test_the_intake_stores_before_it_applies_and_a_replay_rebuilds_halts_too(
    tmp_path: Path,
) -> None:
    files = PolicyFiles(tmp_path / "policies")
    store = PolicyStore()
    intake = DurableIntake(store, files)
    assert await intake.apply(_event(1)) is not None
    assert await intake.apply(_event(2)) is not None
    assert await intake.apply(_event(2)) is None  # a duplicate: neither stored nor applied
    halted = PolicyEvent("policy.halted", _event(2).policy, "guard:n", "t",
                         halt={"reason": "failures"})  # fmt: skip
    await intake.before_halt(halted)
    assert store.halt(halted) is not None
    await intake.before_halt(halted)  # already halted: not stored twice (no conflict)
    again = PolicyStore()
    await DurableIntake(again, PolicyFiles(tmp_path / "policies")).replay()
    assert again.current_version("tone") == 2
    assert again.is_halted("tone", 2)
    fallback = again.fallback("tone")
    assert fallback is not None and fallback.version == 1
    assert [r.event for r in again.history("tone")] == [r.event for r in store.history("tone")]


async def test_a_refused_write_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    blocker = tmp_path / "policies"
    blocker.write_text("")
    store = PolicyStore()
    with pytest.raises(Unavailable):
        await DurableIntake(store, PolicyFiles(blocker)).apply(_event(1))
    assert store.current_version("tone") == 0 and store.records() == []


@pytest.mark.parametrize("version", [0, 2**53, 10**30])
def test_an_event_outside_the_version_bound_is_refused_before_it_reaches_a_store(
    version: int,
) -> None:
    raw = {**_event(1).to_json(), "policy": {"id": "tone", "version": version}}
    with pytest.raises(ValueError, match="from 1 to 9007199254740991"):
        PolicyEvent.from_json(raw)
    top = {**raw, "policy": {"id": "tone", "version": 2**53 - 1}}
    assert PolicyEvent.from_json(top).version == 2**53 - 1

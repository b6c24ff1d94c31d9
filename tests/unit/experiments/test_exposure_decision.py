"""The embedded exposure store keeps which exposure of a call it counted: a restart reads that
decision back from the rows on disk instead of re-making it by another rule (the earliest
``exposed_at``), so the counts and the export's ``counted`` column stay what they were."""

from __future__ import annotations

import json
from pathlib import Path

from sessions.exposures import Exposure, FileExposureStore


def _exposure(sid: str, exposed_at: float) -> Exposure:
    return Exposure(experiment="tone-test", iteration=1, session_id=sid, variant="a",
                    policy="tone", version=1, digest=None, first_assigned_at=1.0,
                    exposed_at=exposed_at, exposed_seq=2, exposed_hash="h" * 64,
                    call_id="call")  # fmt: skip


async def test_a_restart_keeps_the_counted_exposure_of_a_call(tmp_path: Path) -> None:
    path = tmp_path / "exposures.jsonl"
    store = FileExposureStore(path)
    await store.start()
    later, earlier = _exposure("s2", 180.0), _exposure("s1", 179.9)  # saved in that order
    assert await store.save([later], [later]) == [later]
    assert await store.save([earlier], [earlier]) == []
    assert {r.session_id: r.counted for r in await store.rows("tone-test")} == {
        "s1": False, "s2": True}  # fmt: skip
    again = FileExposureStore(path)
    await again.start()
    assert {r.session_id: r.counted for r in await again.rows("tone-test")} == {
        "s1": False, "s2": True}  # fmt: skip
    assert await again.counts("tone-test", 1) == {"a": 1}
    assert await again.timeline("tone-test", 1) == {"a": {180: 1}}


async def test_rows_written_before_the_decision_was_kept_count_the_earliest(
    tmp_path: Path,
) -> None:
    path = tmp_path / "exposures.jsonl"
    rows = [_exposure("s2", 180.0).document(), _exposure("s1", 179.9).document()]
    for row in rows:
        del row["counted"]  # (an older version's line)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    store = FileExposureStore(path)
    await store.start()
    assert {r.session_id: r.counted for r in await store.rows("tone-test")} == {
        "s1": True, "s2": False}  # fmt: skip
    assert await store.timeline("tone-test", 1) == {"a": {120: 1}}

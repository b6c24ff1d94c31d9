"""The assignments export as an analyst's tools read it (docs/experiments.md#assignments-export):
CSV pages concatenated by a script share one header and every column parses to one type; a
session that ended in an earlier iteration is not an assignment of the current one."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from controlplane.rollouts.experiments import EXPORT_COLUMNS
from tests.integration.service.conftest import ControlPlaneUnderTest, eventually
from tests.integration.service.test_experiments import KEY, _doc, _exposed, _ids, _sessions

pytestmark = pytest.mark.timeout(60)

URL = f"/v1/experiments/{KEY}/assignments"


async def _csv_pages(cp: ControlPlaneUnderTest, limit: int) -> list[tuple[list[str], list[Any]]]:
    """Every CSV page (its header, its rows), following X-Next-Cursor."""
    pages, cursor = [], None
    while True:
        query = f"?format=csv&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        headers = {"Authorization": "Bearer tok-viewer"}
        async with cp.http.get(cp.base + URL + query, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            text, cursor = await resp.text(), resp.headers.get("X-Next-Cursor")
        header, *rows = list(csv.reader(io.StringIO(text)))
        pages.append((header, rows))
        if cursor is None:
            return pages


def _parses(column: str, cells: list[str]) -> set[str]:
    """The types a column's non-empty cells parse to, as a CSV reader infers them."""

    def kind(cell: str) -> str:
        if cell in ("true", "false"):
            return "bool"
        for name, conv in (("int", int), ("float", float)):
            try:
                conv(cell)
            except ValueError:
                continue
            return name
        if cell.startswith("{"):
            json.loads(cell)
            return "json"
        return "str"

    kinds = {kind(c) for c in cells if c != ""}
    return {"float"} if kinds == {"int", "float"} else kinds


async def test_csv_pages_share_one_header_and_each_column_one_type(
    cp: ControlPlaneUnderTest,
) -> None:
    """Sessions that left on a ramp-down are exposure-only rows (no live assignment): their
    page once had a shorter header than a page of live rows, so pages did not concatenate."""
    left, live = _ids(KEY, control=3, warm=3), [f"{KEY}-live-{i}" for i in range(4)]
    async with _sessions(cp, left):
        await cp.publish(_doc())
        await _exposed(cp, 6)
        await cp.publish(_doc(percent=0))  # they leave the experiment, then end

        async def all_left() -> bool:
            rows = (await cp.call("GET", URL, expect=200))["items"]
            return len(rows) == 6 and all(r["left_at"] for r in rows)

        await eventually(all_left, timeout=10)
    await eventually(lambda: not cp.service.engine.live, timeout=10)
    await cp.publish(_doc(percent=100))
    async with _sessions(cp, live):
        await _exposed(cp, 10)
        pages = await _csv_pages(cp, limit=3)
    assert len(pages) == 4
    headers = {tuple(header) for header, _ in pages}
    assert headers == {EXPORT_COLUMNS}, headers
    rows = [dict(zip(EXPORT_COLUMNS, row, strict=True)) for _, page in pages for row in page]
    assert sorted(r["session_id"] for r in rows) == sorted([*left, *live])
    for column in EXPORT_COLUMNS:
        assert len(_parses(column, [r[column] for r in rows])) <= 1, column
    assert {r["counted"] for r in rows} == {"true"}
    assert {r["state"] for r in rows} == {"left", "synced"}
    # the JSON items: one set of keys, the same as the CSV header
    body = await cp.call("GET", URL, expect=200)
    assert {tuple(item) for item in body["items"]} == {EXPORT_COLUMNS}


async def test_a_session_that_ended_in_iteration_1_is_no_assignment_of_iteration_2(
    cp: ControlPlaneUnderTest,
) -> None:
    ids = _ids(KEY, control=2, warm=2)
    async with _sessions(cp, ids):
        await cp.publish(_doc())
        await _exposed(cp, 4)
    await eventually(lambda: not cp.service.engine.live, timeout=10)
    await cp.publish(_doc(iteration=2))
    summary = await cp.call("GET", f"/v1/experiments/{KEY}", expect=200)
    assert (summary["iteration"], summary["exposed"]) == (2, 0)
    rows = (await cp.call("GET", URL, expect=200))["items"]
    by_iteration = {(r["session_id"], r["iteration"]): r for r in rows}
    assert set(by_iteration) == {(sid, 1) for sid in ids}, sorted(by_iteration)
    assert all(r["exposed_at"] and r["state"] == "ended" for r in rows)


async def test_a_variant_renamed_mid_iteration_keeps_its_exposures_in_the_summary(
    cp: ControlPlaneUnderTest,
) -> None:
    """A new version renames ``warm`` to ``warm2`` in the same iteration: the sessions exposed
    to ``warm`` stay counted there (their first exposure); the summary once dropped them (its
    total was only the declared variants', below the export's counted rows, and the SRM check
    never saw the broken split). Now listed as removed, weight 0: a mismatch outright."""
    ids = _ids(KEY, control=2, warm=2)
    async with _sessions(cp, ids):
        await cp.publish(_doc())
        await _exposed(cp, 4)
        renamed = _doc()
        renamed["experiment"]["variants"][1]["name"] = "warm2"
        await cp.publish(renamed)

        async def moved() -> bool:
            rows = (await cp.call("GET", URL, expect=200))["items"]
            return sum(1 for r in rows if r["assigned_variant"] == "warm2") == 2

        await eventually(moved, timeout=10)
        summary = await cp.call("GET", f"/v1/experiments/{KEY}", expect=200)
        rows = (await cp.call("GET", URL, expect=200))["items"]
    counted = [r for r in rows if r["counted"]]
    assert summary["exposed"] == len(counted) == 4
    by_name = {v["name"]: v for v in summary["variants"]}
    assert {n: v["exposed"] for n, v in by_name.items()} == {"control": 2, "warm2": 0, "warm": 2}
    assert by_name["warm"]["removed"] is True and by_name["warm"]["weight"] == 0
    assert summary["srm"]["p_value"] == 0.0  # exposures in a variant of weight 0

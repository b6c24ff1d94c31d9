"""The console at any size, in a real Chromium (docs/console.md): the experiment page and the
overview.

The exposures-over-time chart is the server's aggregate (``GET /v1/experiments/{key}/timeline``:
the summary's counts in time bins): 25,000 exposures, more than the 20 pages of 1,000
assignment rows the page once read and charted silently short, show exactly the summary's
counts, and the page never pages through the assignments export."""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.async_api import Page, expect

from sessions.exposures import BIN_S, Exposure
from sessions.model import Session
from tests.integration.console.conftest import screenshot
from tests.integration.service.conftest import ControlPlaneUnderTest

pytestmark = pytest.mark.asyncio(loop_scope="module")

BIG = 25_000


def _exposures(key: str, n: int, start: float) -> list[Exposure]:
    """``n`` exposed sessions over three hours: 3 in 5 control, the rest warm."""
    rows = []
    for i in range(n):
        at = start + (i * 3 * 3600) / n
        variant = "control" if i % 5 < 3 else "warm"
        rows.append(Exposure(
            experiment=key, iteration=1, session_id=f"{key}-{i:06d}", variant=variant,
            policy=key, version=1, digest=None, first_assigned_at=at, exposed_at=at,
            exposed_seq=2, exposed_hash="h" * 64, ended_at=at + 30, kind="voice-agent-v1",
            model="voice-agent",
        ))  # fmt: skip
    return rows


async def test_a_25000_exposure_experiment_charts_every_exposure_from_the_server_aggregate(
    stack: ControlPlaneUnderTest, page: Page
) -> None:
    variants = [{"name": "control", "weight": 50, "set": {}},
                {"name": "warm", "weight": 50, "set": {"keyterms": ["welcome"]}}]  # fmt: skip
    await stack.publish({"id": "big", "match": {"labels": {"team": "big"}},
                         "experiment": {"key": "big", "variants": variants}})  # fmt: skip
    start = (time.time() // 3600 - 4) * 3600  # four hours ago, on the hour
    rows = _exposures("big", BIG, start)
    counted = await stack.service.experiments.store.save(rows, rows)
    assert len(counted) == BIG
    summary = await stack.call("GET", "/v1/experiments/big", expect=200)
    assert [v["exposed"] for v in summary["variants"]] == [15_000, 10_000]
    timeline: dict[str, Any] = await stack.call("GET", "/v1/experiments/big/timeline", expect=200)
    assert (timeline["exposed"], timeline["binned"], timeline["bin_s"]) == (BIG, BIG, BIN_S)
    last = {b["variant"]: b["cumulative"] for b in timeline["bins"]}
    assert last == {"control": 15_000, "warm": 10_000}
    assert len({b["at"] for b in timeline["bins"]}) == 180  # three hours of one-minute bins
    assert sum(b["exposed"] for b in timeline["bins"]) == BIG

    paged: list[str] = []
    page.on("request", lambda r: paged.append(r.url) if "/assignments" in r.url else None)
    await page.goto(f"{stack.base}/ui/experiments/big#token=tok-viewer")
    for v in summary["variants"]:
        one = page.locator(f'[data-testid=exposure-series][data-variant="{v["name"]}"]')
        await expect(one).to_have_attribute("data-count", str(v["exposed"]))
        await expect(one).to_have_attribute("data-binned", str(v["exposed"]))
    chart = page.get_by_test_id("exposures-over-time")
    await expect(chart).to_have_attribute("data-exposed", str(BIG))
    await expect(chart).to_have_attribute("data-binned", str(BIG))
    await expect(page.get_by_test_id("exposures-over-time-note")).to_contain_text(
        f"{BIG} counted exposure(s)"
    )
    await expect(page.locator("[data-testid=exposures-over-time] svg path")).to_have_count(2)
    # each line climbs to its variant's count: the top of the chart is the larger one
    ends = await page.evaluate(
        """() => [...document.querySelectorAll('[data-testid=exposures-over-time] svg path')]
             .map((p) => [p.dataset.variant, p.getAttribute('d').split(' V').pop()])"""
    )
    heights = {name: float(tail.split(" ")[0]) for name, tail in ends}
    assert heights["control"] == 0.0  # y of 15,000 out of 15,000: the top
    assert heights["warm"] == pytest.approx(120 - 120 * 10_000 / 15_000, abs=0.1)
    assert paged == [], f"the page read the assignments export: {paged[:3]}"
    await screenshot(page, "experiment-large")


async def test_the_overview_says_when_it_counted_only_the_first_5000_live_sessions(
    stack: ControlPlaneUnderTest, page: Page
) -> None:
    """5,001 live sessions: the overview reads five pages of 1,000 per refresh, so its counts
    by kind are lower bounds; it says so (it once showed 5,000 as the total), and its recent
    sessions are the newest of those read, newest first (they were the last 20 by id)."""
    now = time.time()
    created = {f"seed-{i:05d}": now - 10_000 + ((i * 7919) % 5001) for i in range(5001)}
    for sid, at in created.items():
        await stack.service.registry.register(Session(
            id=sid, kind="streaming-v3", model="universal-3-5-pro", node="node-a",
            created_at=at, updated_at=at,
        ))  # fmt: skip
    await page.goto(f"{stack.base}/ui/#token=tok-viewer")
    note = page.get_by_test_id("sessions-truncated")
    await expect(note).to_have_attribute("data-read", "5000")
    await expect(page.get_by_test_id("sessions-by-kind")).to_have_attribute(
        "data-complete", "false"
    )
    shown = [await r.get_attribute("data-session") for r in
             await page.get_by_test_id("recent-session").all()]  # fmt: skip
    assert len(shown) == 20
    stamps = [created[s] for s in shown if s is not None]
    assert stamps == sorted(stamps, reverse=True), "recent sessions are not newest first"

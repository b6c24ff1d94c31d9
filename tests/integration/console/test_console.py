"""The web console in a real Chromium (issue #24): login by fragment, a live rollout reaching
100 % without a reload, a session's timeline after a push, the version diff, and a viewer who
sees no mutating control. One browser and one control plane for the module."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets
from playwright.async_api import Page, expect

from controlplane.cli.history import diff_documents
from policies.bucketing import bucket
from tests.integration.console.conftest import acking_clients, screenshot
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROLLOUT_COLUMNS = ("unchanged", "sent", "acked", "unverified", "rejected", "pending")
# the only controls a console page has: none of them changes anything on the server
READ_ONLY_CONTROLS = {"config-at-show", "diff-from", "diff-to", "config-at-input"}


async def figure(page: Page, testid: str) -> int:
    return int(await page.get_by_test_id(testid).inner_text())


async def test_login_by_fragment_keeps_the_token_out_of_the_address_bar(
    stack: ControlPlaneUnderTest, page: Page
) -> None:
    await page.goto(f"{stack.base}/ui/")
    await expect(page.get_by_test_id("login-form")).to_be_visible()
    await screenshot(page, "login")
    await page.goto(f"{stack.base}/ui/#token=tok-viewer")
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    assert page.url == f"{stack.base}/ui/", "the token must leave the address bar"
    assert await page.evaluate("sessionStorage.getItem('controlplane.token')") == "tok-viewer"
    # a refused token brings the form back, saying why
    await page.goto(f"{stack.base}/ui/#token=not-a-token")
    await expect(page.get_by_test_id("login-error")).to_contain_text("401")
    await page.get_by_test_id("login-token").fill("tok-viewer")
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    await page.get_by_test_id("sign-out").click()
    await expect(page.get_by_test_id("login-form")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('controlplane.token')") is None


async def test_live_rollout_reaches_100_percent_after_a_publish_without_a_reload(
    stack: ControlPlaneUnderTest, page: Page
) -> None:
    doc = {"id": "live-rollout", "match": {"labels": {"team": "live"}}}
    async with acking_clients(stack, 3, {"team": "live"}, delay_s=0.4):
        await stack.publish({**doc, "set": {"system_prompt": "one"}})
        await page.goto(f"{stack.base}/ui/policies/live-rollout#token=tok-viewer")
        await expect(page.get_by_test_id("policy-version")).to_have_text("1")
        await expect(page.get_by_test_id("rollout-percent")).to_have_attribute(
            "data-percent", "100"
        )
        await page.evaluate("window.__sameDocument = true")
        # the page follows the rollout stream (server-sent events), it does not poll /rollout
        await expect(page.get_by_test_id("live-status")).to_have_attribute("data-source", "stream")
        polls: list[str] = []
        page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/rollout") else None)
        await stack.publish({**doc, "set": {"system_prompt": "two"}})
        await expect(page.get_by_test_id("policy-version")).to_have_text("2")
        await expect(page.get_by_test_id("rollout-percent")).to_have_attribute(
            "data-percent", "100", timeout=10_000
        )
        assert await page.evaluate("window.__sameDocument") is True, "the page was reloaded"
        assert polls == [], "the rollout was polled, not streamed"
        acked_bar = page.locator("[data-testid=rollout-bar] span.s-acknowledged")
        assert await acked_bar.evaluate("e => e.style.width") == "100%"
        targeted = await figure(page, "rollout-targeted")
        columns = {name: await figure(page, f"rollout-{name}") for name in ROLLOUT_COLUMNS}
        assert targeted == 3
        assert columns["acked"] == 3
        assert sum(columns.values()) == targeted, columns
        # the rows per version and variant are the endpoint's, summed the same way
        api = await stack.call("GET", "/v1/policies/live-rollout/rollout", expect=200)
        (row,) = [r for r in api["versions"] if r["version"] == 2]
        assert row["acknowledged"] == 3
        await screenshot(page, "policy")


async def test_policy_page_polls_when_the_rollout_stream_fails(
    stack: ControlPlaneUnderTest, page: Page
) -> None:
    await page.route("**/rollout/stream", lambda route: route.abort())
    doc = {"id": "polled", "match": {"labels": {"team": "polled"}}}
    async with acking_clients(stack, 2, {"team": "polled"}, delay_s=0.2):
        await stack.publish({**doc, "set": {"system_prompt": "one"}})
        await page.goto(f"{stack.base}/ui/policies/polled#token=tok-viewer")
        await expect(page.get_by_test_id("policy-version")).to_have_text("1")
        await expect(page.get_by_test_id("live-status")).to_have_attribute("data-source", "poll")
        await stack.publish({**doc, "set": {"system_prompt": "two"}})
        await expect(page.get_by_test_id("policy-version")).to_have_text("2")
        await expect(page.get_by_test_id("rollout-percent")).to_have_attribute(
            "data-percent", "100", timeout=10_000
        )


async def test_session_timeline_shows_the_push_live(
    stack: ControlPlaneUnderTest, page: Page
) -> None:
    async with acking_clients(stack, 1, {"team": "timeline"}, config={"system_prompt": "hi"}) as (
        client,
    ):
        assert client.session_id is not None
        await page.goto(f"{stack.base}/ui/sessions/{client.session_id}#token=tok-compliance")
        await expect(page.get_by_test_id("session-id")).to_have_text(client.session_id)
        # what runs upstream next to what the policies want (running_config)
        await expect(page.get_by_test_id("running-config")).to_contain_text("hi")
        entries = page.get_by_test_id("timeline-entry")
        await expect(entries).to_have_count(1)  # the connect entry
        doc = {"id": "timeline", "match": {"labels": {"team": "timeline"}}}
        published = await stack.publish({**doc, "set": {"keyterms": ["Acme"]}})
        version = client.version

        async def acked() -> bool:
            log = await stack.log(client.session_id or "")
            return any(e["status"] == "acked" for e in log)

        await eventually(acked)
        pushed = page.locator('[data-testid=timeline-entry][data-status="acked"]')
        await expect(pushed).to_have_count(1)
        assert published["version"] == 1
        assert await pushed.get_attribute("data-version") == str(version)
        await expect(pushed.get_by_test_id("timeline-delta")).to_contain_text("Acme")
        # the configuration in effect now, verified against the audit chain
        await page.get_by_test_id("config-at-input").fill(
            await page.evaluate("new Date(Date.now() + 1000).toISOString()")
        )
        await page.get_by_test_id("config-at-show").click()
        await expect(page.get_by_test_id("config-at-config")).to_contain_text("Acme")
        await expect(page.get_by_test_id("config-at-verified")).to_have_attribute(
            "data-verified", "true"
        )
        await screenshot(page, "session")


async def test_version_diff_between_two_versions(stack: ControlPlaneUnderTest, page: Page) -> None:
    base = {"id": "diffed", "match": {"labels": {"team": "diff"}}}
    await stack.publish({**base, "set": {"system_prompt": "before"}})
    await stack.publish({**base, "set": {"system_prompt": "after", "keyterms": ["Zed"]},
                         "reason": "adds a keyterm"})  # fmt: skip
    await page.goto(f"{stack.base}/ui/policies/diffed#token=tok-viewer")
    rows = page.get_by_test_id("diff-row")
    await expect(rows).to_have_count(3)  # the reason is part of the document too
    paths = {await r.get_attribute("data-path") for r in await rows.all()}
    assert paths == {"set.system_prompt", "set.keyterms", "reason"}
    prompt = page.locator('[data-testid=diff-row][data-path="set.system_prompt"]')
    await expect(prompt.locator("td.from")).to_contain_text('"before"')
    await expect(prompt.locator("td.to")).to_contain_text('"after"')
    await expect(page.locator('[data-testid=diff-row][data-path="set.keyterms"]')).to_contain_text(
        "Zed"
    )
    latest = page.locator('[data-testid=version-row][data-version="2"]')
    await expect(latest.get_by_test_id("version-reason")).to_have_text("adds a keyterm")
    await expect(latest).to_contain_text("admin")  # a viewer: the role, no token digest
    await screenshot(page, "policy-diff")
    await page.get_by_test_id("diff-from").select_option("2")
    await expect(page.get_by_test_id("diff-empty")).to_be_visible()
    assert page.url.endswith("/ui/policies/diffed?a=2&b=2"), "the chosen diff has its own URL"
    # the console's diff is the CLI's (controlplane/cli/history.py), field for field
    a = {"id": "p", "version": 1, "set": {"prompt": "x", "keyterms": ["a"]}, "match": {}}
    b = {"id": "p", "version": 2, "set": {"prompt": "y"}, "lock": ["prompt"], "reason": "r"}
    in_browser = await page.evaluate(
        "async ([a, b]) => (await import('/ui/static/dom.js')).diffDocuments(a, b)", [a, b]
    )
    expected = diff_documents(a, b)
    assert [{**c, "from": c.get("from"), "to": c.get("to")} for c in in_browser] == expected


async def test_a_viewer_sees_no_mutating_control(stack: ControlPlaneUnderTest, page: Page) -> None:
    await stack.publish({"id": "viewed", "match": {"labels": {"team": "viewer"}},
                         "set": {"system_prompt": "x"}})  # fmt: skip
    async with acking_clients(stack, 1, {"team": "viewer"}) as (client,):
        pages = ["/ui/", "/ui/policies/viewed", f"/ui/sessions/{client.session_id}"]
        await page.goto(f"{stack.base}/ui/#token=tok-viewer")
        for path in pages:
            await page.goto(stack.base + path)
            await expect(page.get_by_test_id("live-status")).to_contain_text("live")
            controls = page.locator("button, input, select, textarea, form")
            names = {await c.get_attribute("data-testid") for c in await controls.all()}
            assert names <= READ_ONLY_CONTROLS, f"{path}: controls {names - READ_ONLY_CONTROLS}"
        # the configuration at an instant is the compliance role's: the viewer is told so
        await page.get_by_test_id("config-at-show").click()
        await expect(page.get_by_test_id("config-at-error")).to_contain_text("403")
        await screenshot(page, "session-viewer")
    # and the server refuses a viewer's mutation whatever the page shows
    await stack.call("DELETE", "/v1/policies/viewed", token="tok-viewer", expect=403)
    await stack.call("GET", "/v1/policies/viewed", token=ADMIN, expect=200)


async def test_a_streaming_session_by_upstream_id_is_unverified_never_acknowledged(
    stack: ControlPlaneUnderTest, page: Page
) -> None:
    """Gateway + emulator: the page opens by the upstream's id; a Streaming v3 push has no
    acknowledgement: the timeline says sent (written), the rollout unverified (and 100 %)."""
    connect = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"
    headers = {"Authorization": "test-key", "X-Session-Labels": "team=stream"}
    async with websockets.connect(stack.ws_base + connect, additional_headers=headers) as ws:
        begin = json.loads(await ws.recv())
        upstream_id = begin["id"]
        await page.goto(f"{stack.base}/ui/sessions/{upstream_id}#token=tok-viewer")
        session_id = stack.live_by_upstream(upstream_id)
        await expect(page.get_by_test_id("session-id")).to_have_text(session_id)
        await stack.publish({"id": "stream-terms", "match": {"labels": {"team": "stream"}},
                             "set": {"keyterms": ["Acme"]}})  # fmt: skip
        pushed = page.locator('[data-testid=timeline-entry][data-cause="policy"]')
        await expect(pushed).to_have_count(1)
        await expect(pushed).to_have_attribute("data-status", "sent")  # written, never acked
        assert await page.locator('[data-testid=timeline-entry][data-status="acked"]').count() == 0
        await page.goto(f"{stack.base}/ui/policies/stream-terms")
        await expect(page.get_by_test_id("rollout-unverified")).to_have_text("1")
        await expect(page.get_by_test_id("rollout-acked")).to_have_text("0")
        await expect(page.get_by_test_id("rollout-percent")).to_have_attribute(
            "data-percent", "100"
        )


async def test_experiment_page_shows_variant_shares_and_the_srm_verdict(
    stack: ControlPlaneUnderTest, page: Page
) -> None:
    variants = [{"name": "control", "weight": 50, "set": {}},
                {"name": "warm", "weight": 50, "set": {"keyterms": ["welcome"]}}]  # fmt: skip
    await stack.publish({"id": "greet", "match": {"labels": {"team": "exp"}},
                         "experiment": {"key": "greet", "variants": variants}})  # fmt: skip
    async with acking_clients(stack, 4, {"team": "exp"}):

        async def exposed() -> bool:
            summary = await stack.call("GET", "/v1/experiments/greet", expect=200)
            return bool(summary["exposed"] == 4)

        await eventually(exposed)
        await page.goto(f"{stack.base}/ui/experiments/greet#token=tok-viewer")
        shares = page.get_by_test_id("variant-share")
        await expect(shares).to_have_count(2)
        counts = [int(await s.get_attribute("data-exposed") or "-1") for s in await shares.all()]
        assert sum(counts) == 4
        # exposures over time, per variant: the same counts as the summary's
        summary = await stack.call("GET", "/v1/experiments/greet", expect=200)
        series = page.get_by_test_id("exposure-series")
        await expect(series).to_have_count(len(summary["variants"]))
        for v in summary["variants"]:
            one = page.locator(f'[data-testid=exposure-series][data-variant="{v["name"]}"]')
            await expect(one).to_have_attribute("data-count", str(v["exposed"]))
        await expect(page.locator("[data-testid=exposures-over-time] svg path")).to_have_count(2)
        # 4 exposures are far below the minimum volume: no mismatch can be declared
        verdict = page.get_by_test_id("srm-verdict")
        await expect(verdict).to_have_attribute("data-mismatch", "false")
        await expect(verdict).to_have_attribute("data-verdict", "too few")
        await screenshot(page, "experiment")


async def test_experiment_page_counts_a_moved_session_in_the_arm_it_was_exposed_to(
    stack: ControlPlaneUnderTest, page: Page
) -> None:
    """A weight change moves sessions from control to warm after they were exposed: the
    page's exposures over time count each in its first arm, exactly as the summary does."""

    def ids_in(lo: float, hi: float, n: int) -> list[str]:
        found = (f"moves-{i}" for i in range(10_000))
        return [s for s in found if lo <= bucket("moves", "moves", s) < hi][:n]

    def doc(control: int) -> dict[str, Any]:
        variants = [{"name": "control", "weight": control, "set": {}},
                    {"name": "warm", "weight": 100 - control,
                     "set": {"keyterms": ["welcome"]}}]  # fmt: skip
        return {"id": "moves", "match": {"labels": {"team": "moves"}},
                "experiment": {"key": "moves", "variants": variants}}  # fmt: skip

    ids = [*ids_in(0.0, 0.2, 1), *ids_in(0.2, 0.5, 3), *ids_in(0.5, 1.0, 1)]
    async with acking_clients(stack, 0, {"team": "moves"}, session_ids=ids):
        await stack.publish(doc(50))

        async def exposed() -> bool:
            summary = await stack.call("GET", "/v1/experiments/moves", expect=200)
            return bool(summary["exposed"] == len(ids))

        await eventually(exposed)
        await stack.publish(doc(20))  # three control sessions move to warm

        async def moved() -> bool:  # each of them runs warm now
            arms = []
            for sid in ids:
                shown = await stack.session(sid)
                arms += [r["variant"] for r in shown["applied"] if shown["state"] == "synced"]
            return arms.count("warm") == 4

        await eventually(moved)
        summary = await stack.call("GET", "/v1/experiments/moves", expect=200)
        assert [v["exposed"] for v in summary["variants"]] == [4, 1]
        await page.goto(f"{stack.base}/ui/experiments/moves#token=tok-viewer")
        for v in summary["variants"]:
            one = page.locator(f'[data-testid=exposure-series][data-variant="{v["name"]}"]')
            await expect(one).to_have_attribute("data-count", str(v["exposed"]))
            share = page.locator(f'[data-testid=variant-share][data-variant="{v["name"]}"]')
            await expect(share).to_have_attribute("data-exposed", str(v["exposed"]))


async def test_a_halted_rollout_shows_its_reason_on_the_policy_page_and_the_overview(
    stack: ControlPlaneUnderTest, page: Page
) -> None:
    guard = {"min_sessions": 2, "max_failure_ratio": 0.01}
    doc = {"id": "halting", "match": {"labels": {"team": "halt"}}, "guard": guard}
    async with acking_clients(stack, 2, {"team": "halt"}, refuse=True):
        await page.goto(f"{stack.base}/ui/#token=tok-viewer")
        await stack.publish({**doc, "set": {"system_prompt": "refused"}})
        row = page.locator('[data-testid=policy-row][data-policy="halting"]')
        await expect(row.get_by_test_id("policy-halt")).to_contain_text("v1 halted")
        await page.goto(f"{stack.base}/ui/policies/halting")
        await expect(page.get_by_test_id("policy-state")).to_have_text("halted")
        await expect(page.get_by_test_id("halt-reason")).to_contain_text("failure_ratio")
        # a halted version is pushed no more: its sessions fall back (targeted 0), the guard's
        # failures stay on its row
        await expect(page.get_by_test_id("rollout-guard-failures")).to_have_text("2")
        columns = {name: await figure(page, f"rollout-{name}") for name in ROLLOUT_COLUMNS}
        assert sum(columns.values()) == await figure(page, "rollout-targeted") == 0
        await screenshot(page, "policy-halted")


async def test_overview_lists_policies_with_progress_and_sessions_by_kind(
    stack: ControlPlaneUnderTest, page: Page
) -> None:
    await stack.publish({"id": "overview", "match": {"labels": {"team": "overview"}},
                         "set": {"system_prompt": "o"}})  # fmt: skip
    async with acking_clients(stack, 2, {"team": "overview"}):
        await page.goto(f"{stack.base}/ui/#token=tok-viewer")
        row = page.locator('[data-testid=policy-row][data-policy="overview"]')
        await expect(row.get_by_test_id("policy-percent")).to_have_text("100 % of 2")
        agents = page.locator('[data-testid=sessions-by-kind] tr[data-kind="voice-agent-v1"]')
        await expect(agents.locator("td").last).to_have_text("2")
        await row.get_by_role("link", name="overview").click()
        await expect(page.get_by_test_id("policy-version")).to_have_text("1")
        assert page.url == f"{stack.base}/ui/policies/overview"
        await page.go_back()
        await expect(row).to_be_visible()
        # recent changes follow without a reload: a publish, then its retirement on top
        changes = page.locator('[data-testid=recent-change][data-policy="overview-recent"]')
        await expect(changes).to_have_count(0)
        await stack.publish({"id": "overview-recent", "match": {"labels": {"team": "nobody"}},
                             "set": {"system_prompt": "r"}})  # fmt: skip
        await expect(changes).to_have_count(1)
        await expect(changes.first).to_have_attribute("data-action", "publish")
        await stack.call("DELETE", "/v1/policies/overview-recent?reason=done", expect=200)
        await expect(changes).to_have_count(2)
        newest = page.get_by_test_id("recent-change").first
        await expect(newest).to_have_attribute("data-action", "retire")
        await expect(newest).to_have_attribute("data-policy", "overview-recent")
        await expect(newest).to_contain_text("done")
        await screenshot(page, "overview")

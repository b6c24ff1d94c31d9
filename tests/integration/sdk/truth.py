"""What a real client's session looks like on the record, checked against the emulator's
ground truth (``/_emulator/sessions/{id}``): ``config-at`` now, the session object (its
``running_config``; a ``synced`` session runs its ``effective_config`` but for the client's
own fields), and on
Streaming v3 no acknowledgement ever claimed. Shared by the SDK and framework tests."""

from __future__ import annotations

import asyncio
import time

from tests.integration.differential.views import diff_views, emulator_view, recorded_view
from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator

__all__ = ["record_problems", "settle"]


async def settle(
    cp: ControlPlaneUnderTest, emulator: Emulator, upstream_id: str, quiet_polls: int = 4
) -> None:
    """Wait until the session's push state is idle and the emulator's timeline of it has not
    grown for ``quiet_polls`` polls (0.1 s apart)."""
    last, quiet = -1, 0
    deadline = time.monotonic() + 10
    while quiet < quiet_polls:
        if time.monotonic() > deadline:
            raise AssertionError(f"session {upstream_id} never settled")
        await asyncio.sleep(0.1)
        timeline = (await emulator.session(upstream_id))["timeline"]
        idle = all(
            ls.push.in_flight is None and not ls.push.can_send(time.monotonic())
            for ls in cp.service.engine.live.values()
            if ls.session.upstream_id == upstream_id
        )
        quiet = quiet + 1 if idle and len(timeline) == last else 0
        last = len(timeline)


async def record_problems(
    cp: ControlPlaneUnderTest, emulator: Emulator, upstream_id: str
) -> list[str]:
    """Every way the record of the session behind ``upstream_id`` differs from what the
    emulator runs now (an empty list: none)."""
    upstream = await emulator.session(upstream_id)
    shown = await cp.session(upstream_id)
    kind, model = shown["kind"], shown["model"]
    truth = emulator_view(kind, model, upstream["config"])
    problems: list[str] = []
    at = repr(time.time())
    answer = await cp.call("GET", f"/v1/sessions/{upstream_id}/config-at?at={at}", expect=200)
    if not answer["rebuild"]["verified"]:
        problems.append(f"config-at not verified: {answer['rebuild']}")
    recorded = recorded_view(kind, model, answer["config"])
    for name, (ours, theirs) in diff_views(recorded, truth).items():
        problems.append(f"config-at.{name}: recorded {ours!r}, upstream runs {theirs!r}")
    running = shown.get("running_config")
    if running is not None:  # what the record says the upstream runs now
        for name, (ours, theirs) in diff_views(recorded_view(kind, model, running), truth).items():
            problems.append(f"running_config.{name}: {ours!r}, upstream runs {theirs!r}")
    if shown["state"] == "synced":
        effective = recorded_view(kind, model, shown["effective_config"])
        own = set(shown.get("client_config") or {})
        for name, (ours, theirs) in diff_views(effective, truth).items():
            if name not in own:
                problems.append(f"synced, effective_config.{name} {ours!r}, upstream {theirs!r}")
    if kind == "streaming-v3":
        acked = [e["seq"] for e in await cp.log(upstream_id) if e["status"] == "acked"]
        if acked or shown["versions"]["acked"] is not None:
            problems.append(f"Streaming v3 acknowledged: entries {acked}, {shown['versions']}")
    return problems

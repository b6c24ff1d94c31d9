"""Differential test against the emulator's ground truth (issue #17; docs/architecture.md,
"The differential test").

Many sessions — streaming v3 and Voice Agent through the gateway, both kinds on the control
channel with their own upstream sockets — go through a seeded random interleaving of policy
publishes and retires, client updates (streaming ``mode`` presets included), control-channel
updates, upstream rejections (emulator faults), acknowledgements and errors, answers after
the acknowledgement timeout (late), racing publishes and clients leaving mid-push, over real
sockets against the bundled emulator. After every operation the system is let settle
(quiescence), and:

1. for every session, the configuration the control plane recorded — ``config-at`` at that
   instant, replayed from the log, and the push engine's model of what the upstream runs —
   equals the emulator's ``config`` (mapped to canonical fields through the dialect tables);
2. at the end, ``config-at`` at random instants inside the quiescent windows equals the
   emulator's ``timeline`` at those instants.

Replay a failing run: ``DIFF_SEED=<seed> .venv/bin/pytest tests/integration/differential -q``
(printed with every failure). ``DIFF_STEPS`` changes the number of operations.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from controlplane.push.agent_acks import AgentAcks
from controlplane.push.live import LiveSession
from sessions.exposures import exposure_problem
from tests.integration.differential.actors import (
    Actor,
    ControlApp,
    GatewayAgent,
    GatewayStreaming,
)
from tests.integration.differential.scenario import (
    POLICY_IDS,
    STREAMING_REJECTIONS,
    Op,
    disabled_classes,
    next_op,
    slow_step,
    stall_step,
)
from tests.integration.differential.views import (
    agent_doubted,
    diff_views,
    doubted,
    emulator_view,
    recorded_view,
)
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, Emulator

DEFAULT_SEEDS = (7, 1234)
STEPS = int(os.environ.get("DIFF_STEPS", "30"))
QUIET_POLLS = 3  # equal consecutive polls that make quiescence
POLL_S = 0.03
QUIESCE_TIMEOUT_S = 8.0
ACK_TIMEOUT_S = 1.0  # the control planes' (conftest): late answers come after it
LATE_BY_S = 0.5  # a late answer comes this long after the acknowledgement timeout
SPECS = {"s0": ("streaming-v3", "universal-3-5-pro", "gateway"),
         "s1": ("streaming-v3", "universal-3-5-pro", "gateway"),
         "s2": ("streaming-v3", "universal-streaming-english", "gateway"),
         "a0": ("voice-agent-v1", "voice-agent", "gateway"),
         "a1": ("voice-agent-v1", "voice-agent", "gateway"),
         "a2": ("voice-agent-v1", "voice-agent", "gateway"),
         "cs": ("streaming-v3", "universal-3-5-pro", "control"),
         "ca": ("voice-agent-v1", "voice-agent", "control")}  # fmt: skip
SAMPLES = 12  # instants sampled per session for the timeline check


def seeds(default: tuple[int, ...]) -> list[int]:
    raw = os.environ.get("DIFF_SEED")
    return [int(raw)] if raw else list(default)


def _replay(seed: int, distributed: bool) -> str:
    where = "tests/integration/differential" + ("/distributed" if distributed else "")
    return f"DIFF_SEED={seed} .venv/bin/pytest {where} -q"


@dataclass
class Run:
    seed: int
    cp: ControlPlaneUnderTest
    emulator: Emulator
    actors: dict[str, Actor] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)  # quiescent [from, to)
    initial: dict[str, dict[str, Any]] = field(default_factory=dict)  # emulator config at open
    versions: dict[str, list[int]] = field(default_factory=dict)  # policy id -> published
    # distributed mode: several replicas; each session lives on one, REST calls go to any
    replicas: list[ControlPlaneUnderTest] = field(default_factory=list)
    home: dict[str, ControlPlaneUnderTest] = field(default_factory=dict)  # actor -> replica
    choose: random.Random = field(default_factory=random.Random)
    tiers: dict[str, str] = field(default_factory=dict)  # actor -> its tier label
    # sessions whose client left ("gone"), under "<name>~<n>": checked like the others (no
    # live state); born: when each session (by key) opened, for the timeline check
    gone: dict[str, Actor] = field(default_factory=dict)
    born: dict[str, float] = field(default_factory=dict)
    # gone sessions whose upstream session a new one resumed: checked up to their end only
    ended: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.replicas = self.replicas or [self.cp]
        self.choose = random.Random(self.seed ^ 0x5EED)  # not the scenario's generator

    def any_cp(self) -> ControlPlaneUnderTest:
        return self.choose.choice(self.replicas)

    async def fail(self, what: str) -> NoReturn:
        recent = "\n  ".join(self.history[-8:])
        off = disabled_classes()
        dump = await self.dump()
        pytest.fail(
            f"differential divergence, seed {self.seed}: {what}\n"
            f"last operations:\n  {recent}\n"
            f"classes off: {off or 'none'}\nreplay: {_replay(self.seed, len(self.replicas) > 1)}\n"
            f"every operation, log and timeline: {dump}",
            pytrace=False,
        )

    async def dump(self) -> Path:
        """Everything needed to read a divergence: the operations, and per session the control
        plane's log and the emulator's timeline."""
        out: dict[str, Any] = {"seed": self.seed, "operations": self.history, "sessions": {}}
        for name, actor in self.all_sessions():
            with contextlib.suppress(Exception):
                upstream = await self.emulator.session(actor.upstream_id)
                out["sessions"][name] = {
                    "session_id": actor.session_id, "upstream_id": actor.upstream_id,
                    "record": await self.cp.session(actor.session_id),
                    "log": await self.any_cp().log(actor.session_id),
                    "upstream": {k: v for k, v in upstream.items() if k != "timeline"},
                    "timeline": upstream["timeline"],
                    "received": actor.received[-20:],
                }  # fmt: skip
        path = Path(tempfile.gettempdir()) / f"differential-{self.seed}.json"
        path.write_text(json.dumps(out, indent=1, default=str))
        return path

    # -- sessions -----------------------------------------------------------------------
    async def open(self, rng: random.Random) -> None:
        for i, name in enumerate(SPECS):
            self.tiers[name] = rng.choice(("gold", "basic"))
            self.home[name] = self.replicas[i % len(self.replicas)]
            self.actors[name] = await self._open_one(name)
        await self.quiesce()
        for name, actor in self.actors.items():
            self.initial[name] = (await self.emulator.session(actor.upstream_id))["config"]

    async def _open_one(self, name: str) -> Actor:
        kind, model, via = SPECS[name]
        home, tier = self.home[name], self.tiers[name]
        actor: Actor
        if via == "control":
            app = ControlApp(name, kind, model, via)
            await app.open(f"ws://127.0.0.1:{self.emulator.port}", home.ws_base, ADMIN,
                           {"tier": tier})  # fmt: skip
            actor = app
        elif kind == "streaming-v3":
            actor = GatewayStreaming(name, kind, model, via)
            await actor.open(home.ws_base, f"tier={tier}")
        else:
            actor = GatewayAgent(name, kind, model, via)
            await actor.open(home.ws_base, f"tier={tier}")
        if via == "gateway":
            actor.session_id = home.live_by_upstream(actor.upstream_id)
        self.born[name] = time.time()
        return actor

    def all_sessions(self) -> list[tuple[str, Actor]]:
        """Every session of the run by key: the open ones, then those whose client left."""
        return [*self.actors.items(), *self.gone.items()]

    async def close(self) -> None:
        for actor in self.actors.values():
            await actor.close()

    async def late_push(self, actor: Actor, body: dict[str, Any]) -> None:
        """Our push answered (gateway: the emulator handles it late) or reported (a control
        app) after the acknowledgement timeout; ``then``: a policy change published while
        it is unanswered."""
        late = ACK_TIMEOUT_S + LATE_BY_S
        if isinstance(actor, ControlApp):
            actor.report_delay_s = late
        else:
            await self.emulator.faults(actor.upstream_id, {"latency_ms": late * 1000})
        try:
            await self.publish(body["policy"])
            if "then" in body:
                await asyncio.sleep(ACK_TIMEOUT_S / 2)
                await self.publish(body["then"])
            await asyncio.sleep(late + 0.2)
        finally:
            if isinstance(actor, ControlApp):
                actor.report_delay_s = 0.0
            else:
                await self.emulator.faults(actor.upstream_id, {"latency_ms": 0})

    async def leave(self, name: str, doc: dict[str, Any], drop: bool, resume: bool) -> None:
        """A gateway client closes its socket right after a publish reached its session, or
        (``drop``) the upstream drops the connection right after handling that push (the push
        possibly unanswered); a new session of the same spec takes its place (``resume``, a
        Voice Agent one: the client resumes the dropped upstream session through the
        gateway)."""
        actor, home = self.actors[name], self.home[name]
        if drop:
            await self.emulator.faults(actor.upstream_id, {"drop_after_messages": 1})
        await self.publish(doc)
        if not drop:
            await actor.close()
        deadline = time.monotonic() + (ACK_TIMEOUT_S * 2 if drop else QUIESCE_TIMEOUT_S)
        while actor.session_id in home.service.engine.live:
            if time.monotonic() > deadline and drop:  # nothing went upstream (no change)
                await self.emulator.faults(actor.upstream_id, {"drop_after_messages": None})
                return
            if time.monotonic() > deadline:
                await self.fail(f"{name}: its session did not end after its client left")
            await asyncio.sleep(POLL_S)
        await self._replace(name, actor, resume)

    async def _replace(self, name: str, actor: Actor, resume: bool) -> None:
        """``actor``'s session ended: it is checked as gone from now on, and a new session of
        the same spec takes its place (``resume``: a Voice Agent one resumes its upstream)."""
        await actor.close()
        key = f"{name}~{len(self.gone)}"
        self.gone[key], self.born[key] = actor, self.born[name]
        self.initial[key] = self.initial[name]
        if resume and isinstance(actor, GatewayAgent):
            self.ended[key] = time.time()
            fresh: Actor = GatewayAgent(name, actor.kind, actor.model, actor.via)
            await fresh.open_resume(self.home[name].ws_base, actor.upstream_id)
            fresh.session_id = self.home[name].live_by_upstream(actor.upstream_id)
            self.born[name] = time.time()
            self.actors[name] = fresh
        else:
            fresh = self.actors[name] = await self._open_one(name)
        self.initial[name] = (await self.emulator.session(fresh.upstream_id))["config"]

    async def stall(self, name: str, body: dict[str, Any]) -> None:
        """STALLED_UPSTREAMS: ``name``'s upstream stops reading; a policy for its kind goes
        out: every other session settles without it (a fan-out waits for no upstream); after
        ``hold`` x the acknowledgement timeout it reads again, or (``cut``) its connection is
        cut with the push's frame still in the buffers (the session ends; a new one takes its
        place)."""
        actor, home = self.actors[name], self.home[name]
        upstream = actor.upstream_id
        await self.emulator.faults(upstream, {"stop_reading": True})
        try:
            await self.publish(body["policy"])
            deadline = time.monotonic() + QUIESCE_TIMEOUT_S
            while not self._others_settled(name):
                if time.monotonic() > deadline:
                    await self.fail(f"the other sessions did not settle while {name}'s "
                                    "upstream read nothing")  # fmt: skip
                await asyncio.sleep(POLL_S)
            await asyncio.sleep(body["hold"] * ACK_TIMEOUT_S)
            if body["cut"]:
                ls = home.service.engine.live.get(actor.session_id)
                leg = getattr(getattr(getattr(ls, "transport", None), "ws", None), "_writer", None)
                if leg is not None:
                    leg.transport.abort()  # the connection is cut
                deadline = time.monotonic() + QUIESCE_TIMEOUT_S
                while actor.session_id in home.service.engine.live:
                    if time.monotonic() > deadline:
                        await self.fail(f"{name}: its session did not end after its cut")
                    await asyncio.sleep(POLL_S)
        finally:
            await self.emulator.faults(upstream, {"stop_reading": False})
        if body["cut"]:
            await self._replace(name, actor, False)

    def _others_settled(self, name: str) -> bool:
        """Every live session but ``name``'s has nothing in flight or due."""
        now = time.monotonic()
        for cp in self.replicas:
            for ls in cp.service.engine.live.values():
                if ls.session.id == self.actors[name].session_id:
                    continue
                if ls.push.in_flight is not None or ls.push.can_send(now) or not _link_idle(ls):
                    return False
        return True

    # -- operations ---------------------------------------------------------------------
    async def apply(self, op: Op, *, record: bool = True) -> None:
        if record:
            self.history.append(op.describe())
        if op.after_ms:
            await asyncio.sleep(op.after_ms / 1000)
        if op.kind == "burst":
            await asyncio.gather(*(self.apply(sub, record=False) for sub in op.body["ops"]))
        elif op.kind == "publish":
            await self.publish(op.body)
        elif op.kind == "retire":
            await self.any_cp().call("DELETE", f"/v1/policies/{op.body['id']}", expect=200)
        elif op.kind == "rollback":
            versions = self.versions[op.body["id"]]
            if len(versions) < 2:
                return  # nothing earlier to roll back to
            to = versions[int(op.body["pick"] * (len(versions) - 1))]
            body = await self.any_cp().call("POST", f"/v1/policies/{op.body['id']}/rollback",
                                      body={"to": to}, expect=200)  # fmt: skip
            versions.append(int(body["version"]))
        elif op.kind == "relabel":
            sid = self.actors[op.target or ""].session_id
            await self.any_cp().call("PATCH", f"/v1/sessions/{sid}/labels",
                               body={"labels": op.body}, expect=200)  # fmt: skip
        elif op.kind == "fault":
            assert op.target is not None
            await self.emulator.faults(self.actors[op.target].upstream_id, op.body)
        elif op.kind == "client_update":
            actor = self.actors[op.target or ""]
            assert isinstance(actor, GatewayStreaming | GatewayAgent)
            await actor.update(op.body)
        elif op.kind == "push_rejection":  # only our push meets it: no client traffic between
            upstream_id = self.actors[op.target or ""].upstream_id
            await self.emulator.faults(upstream_id, op.body["fault"])
            await self.publish(op.body["policy"])
            await self.quiesce()
            await self.emulator.faults(upstream_id, {"fail_fields": None,
                                                     "reject_next_update": None})  # fmt: skip
        elif op.kind == "client_error":
            actor = self.actors[op.target or ""]
            assert isinstance(actor, GatewayAgent)
            await actor.send(op.body)
        elif op.kind == "late_push":
            await self.late_push(self.actors[op.target or ""], op.body)
        elif op.kind == "gone":
            await self.leave(op.target or "", op.body["policy"], bool(op.body.get("drop")),
                             bool(op.body.get("resume")))  # fmt: skip
        elif op.kind == "stall":
            await self.stall(op.target or "", op.body)
        elif op.kind == "control_update":
            actor = self.actors[op.target or ""]
            assert isinstance(actor, ControlApp)
            await actor.update(op.body)
        else:  # pragma: no cover - the generator makes only the kinds above
            raise AssertionError(op)

    async def publish(self, doc: dict[str, Any]) -> None:
        body = await self.any_cp().call("POST", "/v1/policies", body=doc)  # or 200 unchanged
        assert isinstance(body, dict) and "version" in body, body
        if not body.get("unchanged"):
            self.versions.setdefault(doc["id"], []).append(int(body["version"]))

    # -- quiescence ---------------------------------------------------------------------
    def _engine_settled(self) -> bool:
        now = time.monotonic()
        policy_sets = {
            frozenset((p.id, p.version) for p in cp.service.store.active()) for cp in self.replicas
        }
        if len(policy_sets) > 1:
            return False  # a replica has not applied every policy event yet
        for cp in self.replicas:
            live: dict[str, LiveSession] = cp.service.engine.live
            if not all(ls.push.in_flight is None and not ls.push.can_send(now)
                       and _link_idle(ls) for ls in live.values()):  # fmt: skip
                return False
        return True

    async def _emulator_messages(self) -> int:
        async with self.emulator.http.get(f"{self.emulator.base}/_emulator/stats") as resp:
            body = await resp.json()
        return int(body["total"]["control_messages"])

    async def slow_down(self, slow: tuple[str, float] | None) -> str | None:
        """SLOW_UPSTREAMS: the session's upstream handles each message ``factor`` x the
        acknowledgement timeout late during this step (recorded in the history); its upstream
        id (the runner clears the latency once the step settled)."""
        if slow is None:
            return None
        name, factor = slow
        upstream = self.actors[name].upstream_id
        self.history.append(f"slow {name} x{factor}")
        await self.emulator.faults(upstream, {"latency_ms": factor * ACK_TIMEOUT_S * 1000})
        return upstream

    async def quiesce(self, timeout_s: float = QUIESCE_TIMEOUT_S) -> float:
        """Wait until nothing moves: no push in flight or due, no app waiting for an answer,
        every gateway Voice Agent client answered at least once per message (a message the
        gateway holds behind an update whose answer it cannot attribute waits for that update's
        acknowledgement timeout), the emulator's message count unchanged for QUIET_POLLS polls.
        Returns that instant."""
        deadline = time.monotonic() + timeout_s
        last: int | None = None
        quiet = 0
        while quiet < QUIET_POLLS:
            if time.monotonic() > deadline:
                await self.fail("no quiescence within "
                          f"{timeout_s} s (a push or an answer never came)")  # fmt: skip
            await asyncio.sleep(POLL_S)
            count = await self._emulator_messages()
            settled = (self._engine_settled()
                       and not any(a.busy for a in self.actors.values())
                       and all(a.answered for a in self.actors.values()))  # fmt: skip
            quiet = quiet + 1 if settled and count == last else 0
            last = count
        return time.time()

    # -- checks -------------------------------------------------------------------------
    async def config_at(self, actor: Actor, at: float) -> dict[str, Any]:
        body = await self.any_cp().call(
            "GET", f"/v1/sessions/{actor.session_id}/config-at?at={at!r}", expect=200
        )
        if not body["rebuild"]["verified"]:
            await self.fail(f"{actor.name}: config-at at {at} not verified: {body['rebuild']}")
        return dict(body["config"])

    async def check_now(self, at: float, step: int) -> None:
        """Invariant 1 at a quiescent instant, for every session."""
        problems: list[str] = []
        for name, actor in self.all_sessions():
            if name in self.ended:
                continue  # (its upstream session goes on, resumed by another session)
            upstream = await self.emulator.session(actor.upstream_id)
            truth = emulator_view(actor.kind, actor.model, upstream["config"])
            said = await self.said(actor)
            recorded = recorded_view(actor.kind, actor.model, await self.config_at(actor, at))
            for field_name, (ours, theirs) in diff_views(recorded, truth, said).items():
                problems.append(f"{name} config-at.{field_name}: recorded {ours!r}, "
                                f"upstream runs {theirs!r}")  # fmt: skip
            problems += await self.check_view(name, actor, truth, said)
            if name in self.gone:
                continue  # (no live state: its client left)
            ls = self.home[name].service.engine.live.get(actor.session_id)
            if ls is None:
                problems.append(f"{name}: not live in the control plane")
                continue
            running = recorded_view(actor.kind, actor.model, ls.push.base)
            in_doubt = set(ls.session.in_doubt)  # (what the session view says: check_view)
            for field_name, (ours, theirs) in diff_views(running, truth, in_doubt).items():
                problems.append(f"{name} running.{field_name}: modelled {ours!r}, "
                                f"upstream runs {theirs!r}")  # fmt: skip
            if isinstance(actor, GatewayAgent):  # its own answers, each message answered
                kinds = [m["type"] for m in actor.answers()]
                updated, errors = kinds.count("session.updated"), kinds.count("session.error")
                if updated > actor.sent_updates or updated + errors < actor.sent_updates:
                    problems.append(f"{name}: sent {actor.sent_updates} messages, got {updated} "
                                    f"session.updated, {errors} session.error")  # fmt: skip
        if problems:
            await self.fail(f"after step {step}:\n  " + "\n  ".join(problems))

    async def said(self, actor: Actor, at: float | None = None) -> set[str]:
        """The fields a session's record says it may have wrong: a Streaming v3 ``Warning``'s
        (``doubted``), a Voice Agent push no answer confirmed (``agent_doubted``)."""
        if actor.kind != "streaming-v3":
            return agent_doubted(await self.any_cp().log(actor.session_id), at)
        if not STREAMING_REJECTIONS:
            return set()
        return doubted(await self.any_cp().log(actor.session_id), at)

    async def check_view(
        self, name: str, actor: Actor, truth: dict[str, Any], said: set[str]
    ) -> list[str]:
        """``GET /v1/sessions/{id}`` of every session (ended ones too): its ``running_config``
        is what the upstream runs, on its own replica and (the registry, synced in batches
        every 0.25 s) on every other one; ``synced`` means it runs ``effective_config`` but
        for fields the client set itself (an update overriding an unlocked policy field is
        not fought at once: docs/api.md)."""
        problems: list[str] = []
        home = self.home[actor.name]  # (a session whose client left: its spec's replica)
        shown = await home.session(actor.session_id)
        if shown.get("running_config") is None:
            return [f"{name}: GET shows no running_config"]
        running = recorded_view(actor.kind, actor.model, shown["running_config"])
        # only the fields the view itself says are in doubt may differ (a Streaming v3
        # Warning no update explains: docs/audit.md); it is then never "synced"
        in_doubt = set(shown["in_doubt"])
        if not in_doubt <= said:
            problems.append(f"{name}: GET in_doubt {sorted(in_doubt)}, the log's doubt "
                            f"{sorted(said)}")  # fmt: skip
        # (a push of an acknowledging session left unanswered: the view's in_doubt names
        # its fields, as config-at's ``doubts``: the log's doubt exactly)
        if actor.kind != "streaming-v3" and not said <= in_doubt:
            problems.append(f"{name}: GET in_doubt {sorted(in_doubt)}, config-at's doubts "
                            f"leave {sorted(said)} unknown")  # fmt: skip
        tolerated = in_doubt | (said if actor.kind != "streaming-v3" else set())
        for field_name, (ours, theirs) in diff_views(running, truth, tolerated).items():
            problems.append(f"{name} GET running_config.{field_name}: {ours!r}, "
                            f"upstream runs {theirs!r}")  # fmt: skip
        if in_doubt and shown["state"] == "synced":
            problems.append(f"{name}: synced with fields in doubt {sorted(in_doubt)}")
        if shown["state"] == "synced":
            effective = recorded_view(actor.kind, actor.model, shown["effective_config"])
            own = set(shown["client_config"])
            for field_name, (ours, theirs) in diff_views(effective, running).items():
                if field_name not in own:
                    problems.append(f"{name} synced, effective_config.{field_name} {ours!r}, "
                                    f"running {theirs!r}")  # fmt: skip
        for other in (r for r in self.replicas if r is not home):
            deadline = time.monotonic() + 1.0  # a few registry syncs
            while (seen := (await other.session(actor.session_id)).get("running_config")) != (
                shown["running_config"]
            ):
                if time.monotonic() > deadline:
                    problems.append(f"{name}: another replica shows running_config {seen}, "
                                    f"its own {shown['running_config']}")  # fmt: skip
                    break
                await asyncio.sleep(POLL_S)
        return problems

    async def check_exposures(self) -> None:
        """Every experiment exposure is backed by the session's log: the entry it names has
        its hash, names the variant, and runs it (``sessions.exposures.exposure_problem``)."""
        replica = self.any_cp()
        for key in (f"exp-{pid}" for pid in POLICY_IDS):
            async with replica.http.get(
                f"{replica.base}/v1/experiments/{key}/assignments",
                headers={"Authorization": f"Bearer {ADMIN}"},
            ) as r:
                if r.status == 404:
                    continue  # (never published)
                assert r.status == 200, await r.text()
                rows = (await r.json())["items"]
            for row in rows:
                problem = exposure_problem(row, await replica.log(row["session_id"]))
                if problem is not None:
                    await self.fail(f"exposure of {row['session_id']} in {key}: {problem}")

    async def check_timelines(self, rng: random.Random) -> None:
        """Invariant 2: config-at at sampled quiescent instants = the emulator's timeline;
        and a Streaming v3 session is never acknowledged (no ``acked`` entry or version)."""
        for name, actor in self.all_sessions():
            if actor.kind == "streaming-v3":
                replica = self.any_cp()
                acked = [e["seq"] for e in await replica.log(actor.session_id)
                         if e["status"] == "acked"]  # fmt: skip
                versions = (await replica.session(actor.session_id))["versions"]
                if acked or versions["acked"] is not None:
                    await self.fail(f"{name} (Streaming v3) acknowledged: entries {acked}, "
                                    f"versions {versions}")  # fmt: skip
            upstream = await self.emulator.session(actor.upstream_id)
            timeline = [e for e in upstream["timeline"] if e.get("config") is not None]
            ats = [float(e["at"]) for e in timeline]
            end = self.ended.get(name, float("inf"))  # (its own session's windows)
            windows = [w for w in self.windows if w[0] >= self.born[name] and w[1] <= end]
            for lo, hi in rng.sample(windows, k=min(SAMPLES, len(windows))):
                at = rng.uniform(lo, hi)
                i = bisect.bisect_right(ats, at)
                config = timeline[i - 1]["config"] if i else self.initial[name]
                truth = emulator_view(actor.kind, actor.model, config)
                recorded = recorded_view(actor.kind, actor.model, await self.config_at(actor, at))
                diffs = diff_views(recorded, truth, await self.said(actor, at))
                if diffs:
                    await self.fail(f"{name} config-at {at} vs the emulator's timeline: {diffs}")


def _link_idle(ls: LiveSession) -> bool:
    """A gateway Voice Agent session's upstream leg waits for nothing: no update outstanding
    or queued, no answer still owed to one that timed out (it comes late, in order)."""
    link = getattr(ls.transport, "link", None)
    if not isinstance(link, AgentAcks):
        return True
    model = link.model
    return model.outstanding is None and not model.queue and not model.owed


async def run_scenario(run: Run, steps: int) -> None:
    """Open the sessions, then ``steps`` operations, each followed by quiescence and the
    invariants at that instant; the timeline check at the end."""
    off = disabled_classes()
    mode = f"{len(run.replicas)} replicas" if len(run.replicas) > 1 else "embedded"
    print(f"\ndifferential seed {run.seed}, {steps} steps, {mode}, classes off: {off or 'none'}")
    rng = random.Random(run.seed)
    try:
        await run.open(rng)
        quiet_from = await run.quiesce()
        await run.check_now(quiet_from, 0)
        active: set[str] = set()
        names = [(n, a.kind, a.via) for n, a in run.actors.items()]
        slow_rng = random.Random(run.seed ^ 0x510)  # (SLOW_UPSTREAMS: not the operations')
        stall_rng = random.Random(run.seed ^ 0x57A11)  # (STALLED_UPSTREAMS: nor this)
        for step in range(1, steps + 1):
            op = next_op(rng, names, active)
            slow = slow_step(slow_rng, names)
            run.windows.append((quiet_from, time.time()))
            upstream = await run.slow_down(slow)
            await run.apply(op)
            quiet_from = await run.quiesce(QUIESCE_TIMEOUT_S * (2 if slow else 1))
            if upstream is not None:
                await run.emulator.faults(upstream, {"latency_ms": 0})
            await run.check_now(quiet_from, step)
            stall = stall_step(stall_rng, [(n, a.kind, a.via) for n, a in run.actors.items()])
            if stall is not None:  # (after the step's check: its own window and check)
                run.windows.append((quiet_from, time.time()))
                await run.apply(stall)
                quiet_from = await run.quiesce(QUIESCE_TIMEOUT_S * 2)
                await run.check_now(quiet_from, step)
        run.windows.append((quiet_from, time.time()))
        await run.check_timelines(rng)
        await run.check_exposures()
        kinds = collections.Counter(op.split(" ")[0] for op in run.history)
        print(f"differential seed {run.seed}: operations {dict(sorted(kinds.items()))}")
    finally:
        await run.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", seeds(DEFAULT_SEEDS))
async def test_recorded_config_equals_upstream_ground_truth(
    seed: int, cp: ControlPlaneUnderTest, emulator: Emulator, capsys: Any
) -> None:
    with capsys.disabled():
        await run_scenario(Run(seed, cp, emulator), STEPS)

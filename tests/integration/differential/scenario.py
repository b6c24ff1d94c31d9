"""Seeded random operations of the differential test, and the switches for each class.

Every class of operation can be switched off with its constant below, for a class that still
diverges while its fix is pending: the test then prints which classes are off on every run
(never a silent skip), and the constant's comment says which fix turns it back on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "AGENT_CLIENT_RACING_PUSHES",
    "AGENT_PUSH_REJECTIONS",
    "AGENT_REJECTIONS",
    "BURSTS",
    "CLIENT_ERRORS",
    "CLIENT_RACING_PUSHES",
    "CLIENT_UPDATES",
    "CONTROL_UPDATES",
    "DISCONNECTS",
    "LATE_ANSWERS",
    "LOCKS",
    "PRESETS",
    "RACING_PUBLISHES",
    "RELABELS",
    "RETIRES",
    "ROLLBACKS",
    "SAME_POLICY_RACES",
    "SLOW_UPSTREAMS",
    "SPLITS",
    "STALLED_UPSTREAMS",
    "STREAMING_REJECTIONS",
    "Op",
    "disabled_classes",
    "next_op",
    "slow_step",
    "stall_step",
]

# -- interleaving classes (True = exercised) ------------------------------------------------
CLIENT_UPDATES: Final = True  # gateway clients' own UpdateConfiguration / session.update
PRESETS: Final = True  # streaming `mode` presets among client updates (issue #17 case 1)
LOCKS: Final = True  # policies locking some of the fields they set
RETIRES: Final = True  # policies retired (DELETE /v1/policies/{id})
ROLLBACKS: Final = True  # an active policy rolled back to an earlier version
RELABELS: Final = True  # a session's labels changed (PATCH /v1/sessions/{id}/labels)
SPLITS: Final = True  # policies with a rollout percentage or an A/B experiment (control arm)
# emulator faults (session.error) that our pushes meet: a fault, then a policy for the session
AGENT_PUSH_REJECTIONS: Final = True
# emulator faults on voice-agent sessions that any message may meet, the clients' own included
AGENT_REJECTIONS: Final = True
# emulator faults on streaming sessions (a Warning that drops or strips an update, ours or the
# client's). No correlation exists: the record cannot know which update; it says so (an
# `upstream` `unverified` entry, docs/audit.md): the checks accept a mismatch only on a field
# the record says it may have wrong (views.doubted)
STREAMING_REJECTIONS: Final = True
CONTROL_UPDATES: Final = True  # control-channel apps' own `update`s
# agent client messages that draw a session.error (tool.result, an immutable field)
CLIENT_ERRORS: Final = True
# bursts may put a Voice Agent client's own message next to a policy change for the same
# session (a client update may overtake our logged push on the wire: b48eca3)
AGENT_CLIENT_RACING_PUSHES: Final = True
BURSTS: Final = True  # several operations at once, unsynchronised: interleavings on the wire
# two publishes in one burst (one fan-out may coalesce them: controlplane/push/coalescing.py)
RACING_PUBLISHES: Final = True
SAME_POLICY_RACES: Final = True  # ... of the same policy id (two versions racing)
# a burst's client updates start 0-30 ms after its policy change (inside the fan-out)
CLIENT_RACING_PUSHES: Final = True
# an answer after the acknowledgement timeout: a Voice Agent upstream slower than the timeout
# (gateway), a control-channel app reporting late (both kinds); a policy change may come
# while the push is unanswered
LATE_ANSWERS: Final = True
# a gateway session gone mid-push (the client closed its socket right after a publish, or the
# upstream dropped the connection after handling the push), then a new session
DISCONNECTS: Final = True
# some steps run with one gateway Voice Agent session's upstream slowed to near the
# acknowledgement timeout (emulator latency 0.6-1.4 x ACK_TIMEOUT_S per message): answers race
# the timeout, land just after it (late) or just before, with pushes and client updates
# queued behind them. Drawn from a generator of its own (``slow_step``): the operations of a
# seed are the same with the class on or off
SLOW_UPSTREAMS: Final = True
# some steps end with one gateway session's upstream that stops reading (the emulator's
# ``stop_reading``) while a policy reaches it and the other sessions: the others must settle
# without it (a fan-out never waits for one upstream); then it reads again (its push answered
# late, or a Streaming v3 one applied late) or, for a Voice Agent session, its connection is
# cut while the frame waits in the buffers (the push in doubt, never ``rejected``; a new
# session takes its place). Streaming v3 sessions are never cut: a frame lost with its
# connection stays ``sent`` (Streaming v3 has no answer to tell; docs/audit.md). Drawn from a
# generator of its own (``stall_step``): a seed's operations are the same with it on or off
STALLED_UPSTREAMS: Final = True
STALL_SHARE: Final = 0.1

_CLASSES: Final = {
    "CLIENT_UPDATES": CLIENT_UPDATES, "PRESETS": PRESETS, "LOCKS": LOCKS, "RETIRES": RETIRES,
    "ROLLBACKS": ROLLBACKS, "RELABELS": RELABELS, "SPLITS": SPLITS,
    "AGENT_PUSH_REJECTIONS": AGENT_PUSH_REJECTIONS, "AGENT_REJECTIONS": AGENT_REJECTIONS,
    "STREAMING_REJECTIONS": STREAMING_REJECTIONS, "CONTROL_UPDATES": CONTROL_UPDATES,
    "SLOW_UPSTREAMS": SLOW_UPSTREAMS, "STALLED_UPSTREAMS": STALLED_UPSTREAMS,
    "CLIENT_ERRORS": CLIENT_ERRORS, "BURSTS": BURSTS,
    "AGENT_CLIENT_RACING_PUSHES": AGENT_CLIENT_RACING_PUSHES,
    "RACING_PUBLISHES": RACING_PUBLISHES, "SAME_POLICY_RACES": SAME_POLICY_RACES,
    "CLIENT_RACING_PUSHES": CLIENT_RACING_PUSHES, "LATE_ANSWERS": LATE_ANSWERS,
    "DISCONNECTS": DISCONNECTS,
}  # fmt: skip

_POLICY_OPS: Final = ("publish", "retire", "rollback", "push_rejection")
_CLIENT_OPS: Final = ("client_update", "client_error")
POLICY_IDS: Final = ("p-a", "p-b", "p-c")
WORDS: Final = ("alpha", "bravo", "charlie", "delta", "echo")
MODES: Final = ("min_latency", "balanced", "max_accuracy")
CANONICAL: Final = ("prompt", "system_prompt", "agent_context", "keyterms",
                    "min_turn_silence_ms", "max_turn_silence_ms", "vad_threshold")  # fmt: skip
STREAMING_WIRE: Final = {"prompt": "prompt", "keyterms": "keyterms_prompt",
                         "min_turn_silence_ms": "min_turn_silence",
                         "max_turn_silence_ms": "max_turn_silence",
                         "vad_threshold": "vad_threshold"}  # fmt: skip


def disabled_classes() -> list[str]:
    return [name for name, on in _CLASSES.items() if not on]


@dataclass(frozen=True)
class Op:
    kind: str  # publish | retire | client_update | control_update | fault
    target: str | None  # actor name
    body: dict[str, Any]
    after_ms: int = 0  # in a burst: starts this long after the others

    def describe(self) -> str:
        if self.kind == "burst":
            return "burst [" + " | ".join(op.describe() for op in self.body["ops"]) + "]"
        after = f" +{self.after_ms}ms" if self.after_ms else ""
        return f"{self.kind} {self.target or ''} {self.body}{after}".strip()


def value(rng: random.Random, name: str) -> Any:
    n = rng.randint(0, 4)
    if name == "keyterms":
        return rng.sample(WORDS, k=rng.randint(1, 3))
    if name == "min_turn_silence_ms":
        return (100, 160, 240, 320, 400)[n]
    if name == "max_turn_silence_ms":
        return (1000, 1400, 1800, 2200, 2600)[n]
    if name == "vad_threshold":
        return (0.3, 0.4, 0.5, 0.6, 0.7)[n]
    return f"{name}-{rng.randint(0, 9)}"


def _policy(rng: random.Random, active: set[str]) -> Op:
    pid = rng.choice(POLICY_IDS)
    fields = rng.sample(CANONICAL, k=rng.randint(1, 3))
    doc: dict[str, Any] = {"id": pid, "priority": rng.choice((10, 20, 30)),
                           "set": {f: value(rng, f) for f in fields}}  # fmt: skip
    scope = rng.random()
    if scope < 0.25:
        doc["match"] = {"kind": [rng.choice(("streaming-v3", "voice-agent-v1"))]}
    elif scope < 0.5:
        doc["match"] = {"labels": {"tier": rng.choice(("gold", "basic"))}}
    if LOCKS and rng.random() < 0.35:
        doc["lock"] = rng.sample(fields, k=1)
    if SPLITS and rng.random() < 0.3:
        if rng.random() < 0.5:
            doc["rollout"] = {"percent": rng.choice((30, 60))}
        else:  # a control arm that changes nothing: those sessions record `unchanged`
            extra = rng.choice(CANONICAL)
            doc["experiment"] = {"key": f"exp-{pid}", "variants": [
                {"name": "control", "weight": 50, "set": {}},
                {"name": "treatment", "weight": 50, "set": {extra: value(rng, extra)}},
            ]}  # fmt: skip
    active.add(pid)
    return Op("publish", None, doc)


def _streaming_update(rng: random.Random) -> dict[str, Any]:
    if PRESETS and rng.random() < 0.3:
        body: dict[str, Any] = {"mode": rng.choice(MODES)}
        if rng.random() < 0.3:  # a preset and an explicit field in one message
            body["max_turn_silence"] = value(rng, "max_turn_silence_ms")
        return body
    fields = rng.sample(sorted(STREAMING_WIRE), k=rng.randint(1, 2))
    return {STREAMING_WIRE[f]: value(rng, f) for f in fields}


def _agent_update(rng: random.Random) -> dict[str, Any]:
    session: dict[str, Any] = {}
    names = ("system_prompt", "prompt", "keyterms", "min_turn_silence_ms",
             "max_turn_silence_ms", "vad_threshold")  # fmt: skip
    for name in rng.sample(names, k=rng.randint(1, 2)):
        v = value(rng, name)
        if name == "system_prompt":
            session["system_prompt"] = v
        elif name == "prompt":
            session.setdefault("input", {})["transcription_prompt"] = v
        elif name == "keyterms":
            session.setdefault("input", {})["keyterms"] = v
        else:
            key = {"min_turn_silence_ms": "min_silence", "max_turn_silence_ms": "max_silence",
                   "vad_threshold": "vad_threshold"}[name]  # fmt: skip
            session.setdefault("input", {}).setdefault("turn_detection", {})[key] = v
    return session


def _fault(rng: random.Random, name: str, kind: str) -> Op:
    if kind == "voice-agent-v1":
        if rng.random() < 0.5:
            spec: dict[str, Any] = {"reject_next_update": {"code": "invalid_config"}}
        else:
            paths = ("system_prompt", "input.keyterms", "input.turn_detection.max_silence")
            path = rng.choice(paths)
            spec = {"fail_fields": {path: "invalid_value"}}
    else:
        if rng.random() < 0.5:
            spec = {"reject_next_update": {"style": "warning"}}
        else:
            spec = {"fail_fields": {rng.choice(("prompt", "keyterms_prompt")): 3010}}
    return Op("fault", name, spec)


def _client_error(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.5:
        return {"type": "tool.result", "call_id": f"call-{rng.randint(0, 99)}", "result": "x"}
    return {"type": "session.update", "session": {"output": {"voice": rng.choice(("anna", "leo"))}}}


def next_op(rng: random.Random, actors: list[tuple[str, str, str]], active: set[str]) -> Op:
    """One operation, or with BURSTS sometimes two to four run at once."""
    if BURSTS and rng.random() < 0.3:
        ops: list[Op] = []
        for _ in range(rng.randint(2, 4)):  # at most one policy change: its outcome is known
            policy = not any(o.kind in _POLICY_OPS for o in ops)
            op = _one(rng, actors, active, policy=policy, alone=False)
            ops.append(op)
        if RACING_PUBLISHES and ops[0].kind == "publish" and rng.random() < 0.4:
            # a second publish, unsynchronised with the first: of another policy (one fan-out
            # may coalesce them), or of the SAME policy (SAME_POLICY_RACES: two versions of
            # one id racing; the last to land wins, on two replicas too: 55bb551)
            before = set(active)
            second = _policy(rng, active)
            same = SAME_POLICY_RACES and rng.random() < 0.5
            if same:
                active.intersection_update(before | {ops[0].body["id"]})  # (never published)
                second.body["id"] = ops[0].body["id"]
            elif second.body["id"] == ops[0].body["id"]:
                others = [p for p in POLICY_IDS if p != second.body["id"]]
                second.body["id"] = rng.choice(others)
                active.add(second.body["id"])
            ops.append(second)
        if CLIENT_RACING_PUSHES and any(o.kind in _POLICY_OPS for o in ops):
            # the clients' own updates land a few ms after the policy change was asked for:
            # inside its fan-out's write window more often than at once
            ops = [Op(o.kind, o.target, o.body, rng.choice((0, 5, 15, 30)))
                   if o.kind in (*_CLIENT_OPS, "control_update") else o for o in ops]  # fmt: skip
        if not AGENT_CLIENT_RACING_PUSHES and any(o.kind in _POLICY_OPS for o in ops):
            agents = {a[0] for a in actors if a[1] == "voice-agent-v1" and a[2] == "gateway"}
            ops = [o for o in ops if not (o.target in agents and o.kind in _CLIENT_OPS)]
        return Op("burst", None, {"ops": ops})
    return _one(rng, actors, active)


def _one(
    rng: random.Random,
    actors: list[tuple[str, str, str]],
    active: set[str],
    *,
    policy: bool = True,
    alone: bool = True,
) -> Op:
    """One operation; ``actors`` are (name, kind, via) of the open sessions."""
    if alone and (LATE_ANSWERS or DISCONNECTS) and rng.random() < 0.15:
        return _late_or_gone(rng, actors, active)
    roll = rng.random() if policy else rng.uniform(0.42, 1.0)
    if roll < 0.35 or (policy and not active):
        return _policy(rng, active)
    if roll < 0.39 and RETIRES and active:
        pid = rng.choice(sorted(active))
        active.discard(pid)
        return Op("retire", None, {"id": pid})
    if roll < 0.42 and ROLLBACKS and active:  # the runner picks the version (it knows them)
        return Op("rollback", None, {"id": rng.choice(sorted(active)), "pick": rng.random()})
    gateway = [a for a in actors if a[2] == "gateway"]
    control = [a for a in actors if a[2] == "control"]
    if roll < 0.47 and RELABELS:
        name, _, _ = rng.choice(actors)
        return Op("relabel", name, {"tier": rng.choice(("gold", "basic", None))})
    if roll < 0.75 and CLIENT_UPDATES:
        name, kind, _ = rng.choice(gateway)
        body = _streaming_update(rng) if kind == "streaming-v3" else _agent_update(rng)
        return Op("client_update", name, body)
    if roll < 0.85 and CONTROL_UPDATES and control:
        name, _, _ = rng.choice(control)
        fields = rng.sample(("keyterms", "min_turn_silence_ms", "vad_threshold"), k=1)
        return Op("control_update", name, {f: value(rng, f) for f in fields})
    if roll < 0.9 and CLIENT_ERRORS:
        name, _, _ = rng.choice([a for a in gateway if a[1] == "voice-agent-v1"])
        return Op("client_error", name, _client_error(rng))
    agents = [a for a in actors if a[1] == "voice-agent-v1"]
    if roll < 0.95 and AGENT_PUSH_REJECTIONS and alone:  # never in a burst: ours only
        name, _, _ = rng.choice(agents)
        fault = _fault(rng, name, "voice-agent-v1").body
        pid = rng.choice(POLICY_IDS)
        doc = {"id": pid, "priority": 40, "match": {"kind": ["voice-agent-v1"]},
               "set": {"system_prompt": value(rng, "system_prompt"),
                       "max_turn_silence_ms": value(rng, "max_turn_silence_ms")}}  # fmt: skip
        active.add(pid)
        return Op("push_rejection", name, {"fault": fault, "policy": doc})
    faultable = [a for a in actors if a[2] == "gateway"
                 and ((a[1] == "voice-agent-v1" and AGENT_REJECTIONS)
                      or (a[1] == "streaming-v3" and STREAMING_REJECTIONS))]  # fmt: skip
    if faultable:
        name, kind, _ = rng.choice(faultable)
        return _fault(rng, name, kind)
    if policy:
        return _policy(rng, active)
    name, kind, _ = rng.choice(gateway)
    return Op("client_update", name,
              _streaming_update(rng) if kind == "streaming-v3" else _agent_update(rng))  # fmt: skip


def _pushed_to(rng: random.Random, kind: str, pid: str) -> dict[str, Any]:
    """A policy that changes something for every session of ``kind`` (priority above the
    random ones)."""
    names = ("system_prompt", "max_turn_silence_ms") if kind == "voice-agent-v1" else (
        "keyterms", "max_turn_silence_ms")  # fmt: skip
    return {"id": pid, "priority": 40, "match": {"kind": [kind]},
            "set": {n: value(rng, n) for n in names}}  # fmt: skip


def _late_or_gone(rng: random.Random, actors: list[tuple[str, str, str]], active: set[str]) -> Op:
    """``late_push``: the target answers (or reports) our push after the acknowledgement
    timeout, sometimes with another policy change published meanwhile (``then``);
    ``gone``: a gateway client closes its socket right after a publish reached it, or the
    upstream drops the connection right after handling the push (``drop``)."""
    pid = rng.choice(POLICY_IDS)
    active.add(pid)
    late = [a for a in actors if a[1] == "voice-agent-v1" or a[2] == "control"]
    if LATE_ANSWERS and (not DISCONNECTS or rng.random() < 0.6):
        name, kind, _ = rng.choice(late)
        body: dict[str, Any] = {"policy": _pushed_to(rng, kind, pid)}
        if rng.random() < 0.4:
            body["then"] = _policy(rng, active).body
        return Op("late_push", name, body)
    name, kind, _ = rng.choice([a for a in actors if a[2] == "gateway"])
    # the client leaves, or the upstream drops the connection right after handling our push
    # (emulator fault drop_after_messages: its answer may never come)
    drop = rng.random() < 0.5  # resumed by the client (Voice Agent) on a new socket, or not
    body = {"policy": _pushed_to(rng, kind, pid), "drop": drop, "resume": drop and kind ==
            "voice-agent-v1" and rng.random() < 0.6}  # fmt: skip
    return Op("gone", name, body)


SLOW_SHARE: Final = 0.12  # of the steps


def slow_step(rng: random.Random, actors: list[tuple[str, str, str]]) -> tuple[str, float] | None:
    """With SLOW_UPSTREAMS, sometimes (``SLOW_SHARE``) a gateway Voice Agent session whose
    upstream is slowed for this step, and by how much (a factor of the acknowledgement
    timeout, 0.6-1.4); ``rng`` is the runner's own generator for it (never the operations')."""
    roll, factor = rng.random(), round(rng.uniform(0.6, 1.4), 2)
    agents = [a[0] for a in actors if a[1] == "voice-agent-v1" and a[2] == "gateway"]
    if not SLOW_UPSTREAMS or roll >= SLOW_SHARE or not agents:
        return None
    return rng.choice(agents), factor


def stall_step(rng: random.Random, actors: list[tuple[str, str, str]]) -> Op | None:
    """With STALLED_UPSTREAMS, sometimes (``STALL_SHARE``) a ``stall`` to run after the step's
    operation: a gateway session whose upstream stops reading while a policy for its kind
    goes out, for ``hold_s`` (a factor of the acknowledgement timeout), then reads again or
    (``cut``, Voice Agent only) has its connection cut; ``rng`` is the runner's own."""
    roll, hold, cut = rng.random(), round(rng.uniform(0.3, 1.6), 2), rng.random() < 0.4
    gateway = [a for a in actors if a[2] == "gateway"]
    if not STALLED_UPSTREAMS or roll >= STALL_SHARE or not gateway:
        return None
    name, kind, _ = rng.choice(gateway)
    fields = ("system_prompt",) if kind == "voice-agent-v1" else ("keyterms", "max_turn_silence_ms")
    field = rng.choice(fields)
    doc = {"id": "stall", "priority": 5, "match": {"kind": [kind]},
           "set": {field: value(rng, field)}}  # fmt: skip
    return Op("stall", name, {"policy": doc, "hold": hold,
                              "cut": cut and kind == "voice-agent-v1"})  # fmt: skip

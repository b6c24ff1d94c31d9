"""Load test of the control plane: live voice sessions plus a policy publisher.

    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 2m --host http://127.0.0.1:8080

User classes (pick some on the command line, e.g. ``... ControlUser PublisherUser``):

* ``StreamingUser`` — a Universal Streaming v3 session through the gateway (``/v3/ws``)
  sending real-time 50 ms PCM frames (tone/silence turns) to the upstream (the emulator).
* ``AgentUser`` — a Voice Agent session through the gateway (``/v1/ws``) sending real-time
  50 ms ``input.audio`` frames.
* ``ControlUser`` — a control-channel session (``/v1/control``): registers, receives
  ``push`` frames, reports ``applied``.
* ``PublisherUser`` — publishes a new version of policy ``LT_POLICY_ID`` at ``LT_PUBLISH_RATE``
  versions per second to the sessions of this run (label ``lt_run``).

Besides the usual request rows, the run reports (request type ``PUSH`` / ``CONVERGE``):

* ``propagation <kind>`` — publish → the session got the version. Every published prompt
  carries ``[lt:<policy>:<seq>:<publish wall ms>]``; control users time the ``push`` frame on
  receipt, gateway users read the upstream's receipt time (``at`` of the emulator's timeline,
  ``LT_EMULATOR_URL``) when their session ends. Same clock: run locust on the service's host
  (or keep clocks in sync).
* ``convergence control`` — publish → the last control session of this process that was live
  at publish time got it (the publisher waits for it, bounded by ``LT_CONVERGENCE_TIMEOUT_S``).
* ``convergence rollout`` — publish → ``GET /v1/policies/{id}/rollout`` shows nothing pending.
* ``connect <kind>`` — handshake until ``Begin`` / ``session.ready`` / ``registered``.
* failures: refused or dropped connections, upstream ``Error`` / ``session.error`` frames,
  control-channel ``error`` frames, publishes that are not 201.

Scenarios (``LT_SCENARIO``): ``steady`` (held sessions, a version every 5 s), ``broadcast``
(mostly control sessions, a version every second to all of them), ``storm`` (3 s sessions,
connect storm, no publisher), ``churn`` (2–8 s sessions, a version every second). Any preset
value can be overridden: ``LT_WEIGHTS=streaming=3,agent=1,control=4``, ``LT_PUBLISH_RATE``,
``LT_SESSION_S`` (``0`` = held until the end, ``5``, or ``2-8``).

SLOs, checked when locust quits (exit code 3 when one is breached, else 0):
``LT_SLO_PROPAGATION_P99_MS`` (2000), ``LT_SLO_CONVERGENCE_P99_MS`` (5000),
``LT_SLO_CONNECT_P99_MS`` (2000), ``LT_SLO_FAIL_RATIO`` (0.01),
``LT_SLO_MIN_PROPAGATIONS`` (0: how many propagation samples the run must have).

Other settings: ``LT_TOKEN`` (bearer token with the compliance or admin role; also used for
the control channel), ``LT_API_KEY`` (upstream key the gateway forwards; default
``loadtest-key``), ``LT_EMULATOR_URL`` (e.g. ``http://127.0.0.1:8090``), ``LT_RUN`` (run label;
random per process — set the same value on every worker in distributed mode),
``LT_POLICY_ID`` (``loadtest``), ``LT_PROMPT_CHARS`` (165), ``LT_KEYTERMS`` (0),
``LT_AUDIO`` (``turns`` or ``silence``), ``LT_STREAMING_MODEL``, ``LT_CONVERGENCE_TIMEOUT_S``
(10), ``LT_KEEP_POLICY`` (``1`` keeps the run's policy; by default it is retired when the run
ends). A preflight stops the run (exit code 2) when ``--host`` is unreachable or refuses
``LT_TOKEN``; ``--csv PREFIX`` adds ``PREFIX_summary.json`` with the SLO verdict (docs/loadtest.md).
Convergence needs the publisher and the sessions in the same process (run locust
without workers, or read propagation only).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import requests
import websocket  # websocket-client: a locust dependency (python-socketio[client]), gevent-safe
from locust import HttpUser, User, between, constant, constant_pacing, events, task
from locust.env import Environment
from locust.runners import STATE_CLEANUP, STATE_STOPPED, STATE_STOPPING, WorkerRunner
from locust.user.users import LOCUST_STATE_STOPPING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from archive import (
    PreflightError,
    final_stats_csv,
    preflight,
    retire_policy,
    summary_path,
    write_summary,
)
from payloads import (
    AGENT_RATE,
    FRAME_MS,
    STREAMING_MODEL,
    STREAMING_RATE,
    find_marker,
    pcm_silence,
    pcm_tone,
    policy_doc,
)

log = logging.getLogger("loadtest")

# -- settings ----------------------------------------------------------------------------------
SCENARIOS: dict[str, dict[str, Any]] = {
    "steady": {"weights": "streaming=3,agent=1,control=4", "rate": 0.2, "session_s": "0"},
    "broadcast": {"weights": "streaming=1,agent=1,control=6", "rate": 1.0, "session_s": "0"},
    "storm": {"weights": "streaming=2,agent=1,control=3", "rate": 0.0, "session_s": "3"},
    "churn": {"weights": "streaming=2,agent=1,control=3", "rate": 1.0, "session_s": "2-8"},
}


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


SCENARIO = _env("LT_SCENARIO", "steady")
if SCENARIO not in SCENARIOS:
    raise SystemExit(f"LT_SCENARIO={SCENARIO!r}: choose one of {', '.join(SCENARIOS)}")
PRESET = SCENARIOS[SCENARIO]
TOKEN = _env("LT_TOKEN", "")
API_KEY = _env("LT_API_KEY", "loadtest-key")
EMULATOR_URL = _env("LT_EMULATOR_URL", "").rstrip("/")
RUN = _env("LT_RUN", "lt" + uuid.uuid4().hex[:10])
POLICY_ID = _env("LT_POLICY_ID", "loadtest")
PUBLISH_RATE = float(_env("LT_PUBLISH_RATE", str(PRESET["rate"])))
PROMPT_CHARS = int(_env("LT_PROMPT_CHARS", "165"))
KEYTERMS = int(_env("LT_KEYTERMS", "0"))
AUDIO = _env("LT_AUDIO", "turns")
MODEL = _env("LT_STREAMING_MODEL", STREAMING_MODEL)
CONVERGENCE_TIMEOUT_S = float(_env("LT_CONVERGENCE_TIMEOUT_S", "10"))
KEEP_POLICY = _env("LT_KEEP_POLICY", "0").lower() in ("1", "true", "yes")
CONNECT_TIMEOUT_S = 15.0
SLO = {
    "propagation_p99_ms": float(_env("LT_SLO_PROPAGATION_P99_MS", "2000")),
    "convergence_p99_ms": float(_env("LT_SLO_CONVERGENCE_P99_MS", "5000")),
    "connect_p99_ms": float(_env("LT_SLO_CONNECT_P99_MS", "2000")),
    "fail_ratio": float(_env("LT_SLO_FAIL_RATIO", "0.01")),
    "min_propagations": float(_env("LT_SLO_MIN_PROPAGATIONS", "0")),
}


def _weights(raw: str) -> dict[str, int]:
    out = {"streaming": 0, "agent": 0, "control": 0}
    for item in raw.split(","):
        key, _, value = item.partition("=")
        if key.strip() not in out or not value.strip().isdigit():
            raise SystemExit(f"LT_WEIGHTS item {item!r} must be streaming|agent|control=<int>")
        out[key.strip()] = int(value)
    return out


WEIGHTS = _weights(_env("LT_WEIGHTS", PRESET["weights"]))


def _lifetime() -> Callable[[], float]:
    raw = _env("LT_SESSION_S", PRESET["session_s"])
    low, _, high = raw.partition("-")
    a, b = float(low), float(high or low)
    return lambda: random.uniform(a, b) if b > a else a


SESSION_S = _lifetime()


# -- shared in-process state (publisher <-> control users) -------------------------------------
@dataclass
class Publish:
    at: float  # wall clock, just before the POST
    targets: set[str]  # control sessions live in this process at publish time
    receipts: dict[str, float] = field(default_factory=dict)


PUBLISHED: dict[int, Publish] = {}  # seq -> publish (this process's publisher)
LIVE_CONTROL: dict[str, float] = {}  # session id -> registered at (wall clock)
SEQ = iter(range(1, 10**9))


def _fire(
    env: Environment,
    kind: str,
    name: str,
    ms: float,
    exc: BaseException | None = None,
    length: int = 0,
) -> None:
    env.events.request.fire(
        request_type=kind,
        name=name,
        response_time=ms,
        response_length=length,
        exception=exc,
        context={},
    )


class SessionError(Exception):
    """A failure of a session (refused, dropped, upstream error)."""


def _ws_base(host: str) -> str:
    if host.startswith("https://"):
        return "wss://" + host[len("https://") :].rstrip("/")
    if host.startswith("http://"):
        return "ws://" + host[len("http://") :].rstrip("/")
    return host.rstrip("/")


def _audio_frames(rate: int) -> tuple[bytes, bytes]:
    tone = pcm_tone(FRAME_MS, rate) if AUDIO != "silence" else pcm_silence(FRAME_MS, rate)
    return tone, pcm_silence(FRAME_MS, rate)


TURN_MS, PAUSE_MS = 1500, 1500  # 1.5 s of tone, 1.5 s of silence: one turn every 3 s


# -- sessions ----------------------------------------------------------------------------------
class SessionUser(User):
    """One live session at a time: connect, run for its lifetime, report, close, repeat."""

    abstract = True
    wait_time = between(0.0, 0.5)
    kind = "session"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.ws: websocket.WebSocket | None = None
        self.reader: gevent.Greenlet | None = None
        self.established = 0.0
        self.upstream_id: str | None = None
        self.expect_close = False

    # subclasses: connect() sets self.ws (and upstream_id); hold(deadline) runs the session
    @task
    def session(self) -> None:
        lifetime = SESSION_S()
        started = time.time()
        try:
            try:
                self.connect()
            except Exception as exc:
                _fire(
                    self.environment,
                    "WS",
                    f"connect {self.kind}",
                    (time.time() - started) * 1000,
                    exc,
                )
                self._close()
                return
            self.established = time.time()
            _fire(
                self.environment, "WS", f"connect {self.kind}", (self.established - started) * 1000
            )
            deadline = self.established + lifetime if lifetime > 0 else None
            self.hold(deadline)
        finally:
            self.finish()

    def connect(self) -> None:
        raise NotImplementedError

    def stopping(self) -> bool:
        """Locust asked this user to stop (test end with --stop-timeout, or a ramp-down)."""
        runner = self.environment.runner
        if runner is not None and runner.state in (STATE_STOPPING, STATE_CLEANUP, STATE_STOPPED):
            return True
        return getattr(self, "_state", None) == LOCUST_STATE_STOPPING

    def hold(self, deadline: float | None) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """End the session: report what the upstream received, then close."""
        self.expect_close = True
        if self.ws is not None and self.upstream_id and EMULATOR_URL:
            self.upstream_propagation()
        self._close()

    def _close(self) -> None:
        self.expect_close = True
        if self.reader is not None:
            self.reader.kill(block=True, timeout=2)
            self.reader = None
        if self.ws is not None:
            try:
                self.ws.close(timeout=2)
            except Exception:
                pass
            self.ws = None
        self.upstream_id = None

    def on_stop(self) -> None:
        self.finish()

    def open(self, url: str, headers: list[str]) -> websocket.WebSocket:
        self.expect_close = False
        ws = websocket.create_connection(
            url,
            header=headers,
            timeout=CONNECT_TIMEOUT_S,
            enable_multithread=True,
            suppress_origin=True,
        )
        self.ws = ws
        return ws

    def wait_for(self, ws: websocket.WebSocket, kind: str) -> dict[str, Any]:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while time.monotonic() < deadline:
            ws.settimeout(max(0.1, deadline - time.monotonic()))
            frame = json.loads(ws.recv())
            if frame.get("type") == kind:
                return dict(frame)
            if frame.get("type") in ("Error", "error", "session.error"):
                raise SessionError(f"refused: {json.dumps(frame)[:200]}")
        raise SessionError(f"no {kind} within {CONNECT_TIMEOUT_S}s")

    def error(self, what: str, detail: str) -> None:
        _fire(self.environment, "WS", f"{what} {self.kind}", 0, SessionError(detail[:300]))

    def read_loop(self, on_text: Callable[[str, float], None]) -> None:
        """Receiver greenlet: every text frame to ``on_text``; an unexpected close is an error."""
        ws = self.ws
        assert ws is not None
        ws.settimeout(None)
        try:
            while True:
                opcode, data = ws.recv_data()
                now = time.time()
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    on_text(data.decode(), now)
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    if not self.expect_close and code not in (1000,):
                        self.error("closed", f"closed by the server: {code} {data[2:].decode()}")
                    return
        except gevent.GreenletExit:
            raise
        except Exception as exc:
            if not self.expect_close:
                self.error("closed", f"connection lost: {type(exc).__name__}: {exc}")

    def stream(self, deadline: float | None, send: Callable[[int], None]) -> None:
        """Call ``send(k)`` for frame k every 50 ms of wall time (never ahead of real time)."""
        start = time.monotonic()
        k = 0
        while (deadline is None or time.time() < deadline) and not self.stopping():
            if self.reader is not None and self.reader.dead:
                return  # the connection is gone (reported by the reader)
            target = start + k * FRAME_MS / 1000
            delay = target - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            send(k)
            k += 1

    def upstream_propagation(self) -> None:
        """Read the upstream's timeline and report publish → upstream receipt per version."""
        try:
            r = requests.get(f"{EMULATOR_URL}/_emulator/sessions/{self.upstream_id}", timeout=5)
            r.raise_for_status()
            timeline = r.json().get("timeline", [])
        except Exception as exc:
            self.error("inspect", f"emulator inspection failed: {exc}")
            return
        for entry in timeline:
            found = find_marker(json.dumps(entry.get("message")))
            if found is None or found[0] != POLICY_ID or found[2] is None:
                continue
            published = found[2]
            if published < self.established:
                continue  # the session started on that version (connect), not a propagation
            ms = (float(entry["at"]) - published) * 1000
            _fire(self.environment, "PUSH", f"propagation {self.kind}", ms)


class StreamingUser(SessionUser):
    """Universal Streaming v3 through the gateway, real-time 16 kHz PCM."""

    weight = WEIGHTS["streaming"]
    kind = "streaming"

    def connect(self) -> None:
        url = (
            f"{_ws_base(self.host)}/v3/ws?sample_rate={STREAMING_RATE}&speech_model={MODEL}"
            "&format_turns=true"
        )
        ws = self.open(url, [f"Authorization: {API_KEY}", f"X-Session-Labels: lt_run={RUN}"])
        begin = self.wait_for(ws, "Begin")
        self.upstream_id = str(begin.get("id"))

    def hold(self, deadline: float | None) -> None:
        ws = self.ws
        assert ws is not None

        def on_text(text: str, now: float) -> None:
            if '"Error"' in text or '"Warning"' in text:
                frame = json.loads(text)
                if frame.get("type") == "Error":
                    self.error("upstream", f"Error: {text[:200]}")

        self.reader = gevent.spawn(self.read_loop, on_text)
        tone, quiet = _audio_frames(STREAMING_RATE)
        period = TURN_MS + PAUSE_MS
        self.stream(
            deadline, lambda k: ws.send_binary(tone if (k * FRAME_MS) % period < TURN_MS else quiet)
        )


class AgentUser(SessionUser):
    """Voice Agent through the gateway, real-time 24 kHz PCM as ``input.audio``."""

    weight = WEIGHTS["agent"]
    kind = "agent"

    def connect(self) -> None:
        ws = self.open(
            f"{_ws_base(self.host)}/v1/ws",
            [f"Authorization: Bearer {API_KEY}", f"X-Session-Labels: lt_run={RUN}"],
        )
        ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"system_prompt": "You are a load-test agent."},
                }
            )
        )
        ready = self.wait_for(ws, "session.ready")
        self.upstream_id = str(ready.get("session_id"))

    def hold(self, deadline: float | None) -> None:
        ws = self.ws
        assert ws is not None

        def on_text(text: str, now: float) -> None:
            if '"session.error"' in text:
                frame = json.loads(text)
                if frame.get("type") == "session.error":
                    self.error("upstream", f"session.error: {text[:200]}")

        self.reader = gevent.spawn(self.read_loop, on_text)
        tone, quiet = (
            json.dumps({"type": "input.audio", "audio": base64.b64encode(f).decode()})
            for f in _audio_frames(AGENT_RATE)
        )
        period = TURN_MS + PAUSE_MS
        self.stream(
            deadline, lambda k: ws.send(tone if (k * FRAME_MS) % period < TURN_MS else quiet)
        )


class ControlUser(SessionUser):
    """A control-channel session: receives pushes, reports ``applied``."""

    weight = WEIGHTS["control"]
    kind = "control"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.session_id: str | None = None

    def connect(self) -> None:
        ws = self.open(f"{_ws_base(self.host)}/v1/control", [f"Authorization: Bearer {TOKEN}"])
        kind = random.choice(("streaming-v3", "voice-agent-v1"))
        model = MODEL if kind == "streaming-v3" else "voice-agent"
        ws.send(
            json.dumps(
                {
                    "type": "register",
                    "kind": kind,
                    "model": model,
                    "labels": {"lt_run": RUN},
                    "config": {},
                }
            )
        )
        registered = self.wait_for(ws, "registered")
        self.session_id = str(registered["session_id"])

    def hold(self, deadline: float | None) -> None:
        ws = self.ws
        assert ws is not None and self.session_id is not None
        sid = self.session_id
        LIVE_CONTROL[sid] = self.established

        def on_text(text: str, now: float) -> None:
            if text.startswith('{"type":"push"'):
                frame = json.loads(text)
                found = find_marker(text)
                if found is not None and found[0] == POLICY_ID and found[2] is not None:
                    published = found[2]
                    if published >= self.established:
                        _fire(
                            self.environment,
                            "PUSH",
                            "propagation control",
                            (now - published) * 1000,
                            length=len(text),
                        )
                        mine = PUBLISHED.get(found[1])
                        if mine is not None and abs(mine.at - published) < 0.002:
                            mine.receipts[sid] = now
                ws.send(json.dumps({"type": "applied", "version": frame["version"]}))
            elif text.startswith('{"type": "error"') or text.startswith('{"type":"error"'):
                self.error("channel", text[:200])

        self.reader = gevent.spawn(self.read_loop, on_text)
        try:
            while (deadline is None or time.time() < deadline) and not self.stopping():
                if self.reader.dead:
                    return
                gevent.sleep(
                    0.25 if deadline is None else min(0.25, max(0.0, deadline - time.time()))
                )
        finally:
            LIVE_CONTROL.pop(sid, None)

    def finish(self) -> None:
        if self.session_id is not None:
            LIVE_CONTROL.pop(self.session_id, None)
            self.session_id = None
        super().finish()


# -- publisher ---------------------------------------------------------------------------------
class PublisherUser(HttpUser):
    """Publishes a new version of ``LT_POLICY_ID`` (to this run's sessions) at a fixed rate."""

    fixed_count = 1 if PUBLISH_RATE > 0 else 0
    weight = 0
    wait_time = constant_pacing(1 / PUBLISH_RATE) if PUBLISH_RATE > 0 else constant(1)

    def on_start(self) -> None:
        if not TOKEN:
            log.error("LT_TOKEN is not set: the publisher cannot publish")

    @task
    def publish(self) -> None:
        seq = next(SEQ)
        published = time.time()
        record = Publish(published, set(LIVE_CONTROL))
        PUBLISHED[seq] = record  # before the POST: pushes can arrive before its answer
        doc = policy_doc(
            POLICY_ID,
            seq,
            published_ms=round(published * 1000),
            labels={"lt_run": RUN},
            prompt_chars=PROMPT_CHARS,
            keyterms=KEYTERMS,
        )
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with self.client.post(
            "/v1/policies", json=doc, headers=headers, catch_response=True, name="POST /v1/policies"
        ) as resp:
            if resp.status_code != 201:
                resp.failure(f"publish answered {resp.status_code}: {resp.text[:200]}")
                PUBLISHED.pop(seq, None)
                return
        self.wait_rollout(published, headers)
        self.wait_control(seq, record)
        for old in [s for s in PUBLISHED if s < seq - 50]:
            PUBLISHED.pop(old, None)

    def wait_rollout(self, published: float, headers: dict[str, str]) -> None:
        """Publish → the service's rollout view shows nothing pending for the latest version."""
        deadline = time.monotonic() + CONVERGENCE_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.client.get(
                f"/v1/policies/{POLICY_ID}/rollout",
                headers=headers,
                name="GET /v1/policies/[id]/rollout",
                catch_response=True,
            ) as r:
                if r.status_code != 200:
                    r.failure(f"rollout answered {r.status_code}")
                    return
                body = r.json()
            latest = body.get("version")
            rows = body.get("versions", [])
            if all(row["pending"] == 0 and row["version"] == latest for row in rows):
                _fire(
                    self.environment,
                    "CONVERGE",
                    "convergence rollout",
                    (time.time() - published) * 1000,
                )
                return
            gevent.sleep(0.05)
        _fire(
            self.environment,
            "CONVERGE",
            "convergence rollout",
            CONVERGENCE_TIMEOUT_S * 1000,
            SessionError(f"still pending after {CONVERGENCE_TIMEOUT_S}s"),
        )

    def wait_control(self, seq: int, record: Publish) -> None:
        """Publish → the last control session (live at publish time, still live) got it."""
        if not record.targets:
            return
        deadline = time.monotonic() + CONVERGENCE_TIMEOUT_S
        while time.monotonic() < deadline:
            waiting = [s for s in record.targets if s not in record.receipts and s in LIVE_CONTROL]
            if not waiting:
                break
            gevent.sleep(0.01)
        else:
            missing = [s for s in record.targets if s not in record.receipts and s in LIVE_CONTROL]
            if missing:
                _fire(
                    self.environment,
                    "CONVERGE",
                    "convergence control",
                    CONVERGENCE_TIMEOUT_S * 1000,
                    SessionError(
                        f"{len(missing)} of {len(record.targets)} control sessions "
                        f"without version {seq} after {CONVERGENCE_TIMEOUT_S}s"
                    ),
                )
                return
        if record.receipts:
            ms = (max(record.receipts.values()) - record.at) * 1000
            _fire(self.environment, "CONVERGE", "convergence control", ms)


# -- SLOs ---------------------------------------------------------------------------------------
USER_ERRORS: list[str] = []


@events.user_error.add_listener
def _user_error(user_instance: Any, exception: BaseException, tb: Any, **_: Any) -> None:
    USER_ERRORS.append(f"{type(user_instance).__name__}: {type(exception).__name__}: {exception}")


@events.init.add_listener
def _announce(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    log.info(
        "scenario %s: weights %s, publish rate %.2f/s, run label lt_run=%s, SLOs %s",
        SCENARIO,
        WEIGHTS,
        PUBLISH_RATE,
        RUN,
        SLO,
    )
    if not EMULATOR_URL:
        log.info("LT_EMULATOR_URL not set: gateway sessions do not report propagation")
    if environment.host:
        try:
            preflight(environment.host, TOKEN, publishing=PUBLISH_RATE > 0)
        except PreflightError as exc:
            log.error("preflight failed: %s", exc)
            raise SystemExit(2) from None


@events.test_start.add_listener
def _propagation_rows(environment: Environment, **_: Any) -> None:
    """Every propagation row is in the --csv output, also one without samples (n = 0)."""
    if not isinstance(environment.runner, WorkerRunner):
        for kind in ("control", "streaming", "agent"):
            environment.stats.get(f"propagation {kind}", "PUSH")


def evaluate_slos(environment: Environment) -> list[str]:
    """The breached SLOs of a finished run (empty when all hold)."""
    stats = environment.stats
    breaches: list[str] = []
    propagations = 0
    for (name, _kind), entry in stats.entries.items():
        if entry.num_requests == 0:
            continue
        p99 = entry.get_response_time_percentile(0.99)
        if name.startswith("propagation"):
            propagations += entry.num_requests
            if p99 > SLO["propagation_p99_ms"]:
                breaches.append(f"{name} p99 {p99:.0f} ms > {SLO['propagation_p99_ms']:g} ms")
        elif name.startswith("convergence") and p99 > SLO["convergence_p99_ms"]:
            breaches.append(f"{name} p99 {p99:.0f} ms > {SLO['convergence_p99_ms']:g} ms")
        elif name.startswith("connect") and p99 > SLO["connect_p99_ms"]:
            breaches.append(f"{name} p99 {p99:.0f} ms > {SLO['connect_p99_ms']:g} ms")
    total = stats.total
    if total.num_requests == 0:
        breaches.append("no requests were made")
    elif total.fail_ratio > SLO["fail_ratio"]:
        breaches.append(f"failure ratio {total.fail_ratio:.4f} > {SLO['fail_ratio']}")
    if USER_ERRORS:
        breaches.append(f"{len(USER_ERRORS)} user errors, first: {USER_ERRORS[0][:200]}")
    if propagations < SLO["min_propagations"]:
        breaches.append(f"{propagations} propagation samples < {SLO['min_propagations']:.0f}")
    return breaches


@events.test_stop.add_listener
def _verdict_in_html_report(environment: Environment, **_: Any) -> None:
    """--html: the report (written before ``quitting``) shows the profile in its header."""
    if isinstance(environment.runner, WorkerRunner):
        return
    if getattr(environment.parsed_options, "html_file", None):
        breaches = evaluate_slos(environment)
        mark = "SLO PASS" if not breaches else f"SLO FAIL: {'; '.join(breaches)}"
        environment.profile = f"{environment.profile} | {mark}" if environment.profile else mark


@events.quitting.add_listener
def _check_slos(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    breaches = evaluate_slos(environment)
    summary = {
        name: {
            "n": e.num_requests,
            "fail": e.num_failures,
            "p50_ms": round(e.get_response_time_percentile(0.5), 1),
            "p99_ms": round(e.get_response_time_percentile(0.99), 1),
        }
        for (name, _), e in environment.stats.entries.items()
        if name.split(" ")[0] in ("propagation", "convergence", "connect")
    }
    log.info("loadtest summary: %s", json.dumps(summary, sort_keys=True))
    retired = "kept (LT_KEEP_POLICY)" if KEEP_POLICY else "not published (no publisher)"
    if PUBLISH_RATE > 0 and not KEEP_POLICY and TOKEN and environment.host:
        retired = retire_policy(environment.host, TOKEN, POLICY_ID, RUN)
        log.info("policy %s at the end of the run: %s", POLICY_ID, retired)
    verdict = "fail" if breaches else "pass"
    options = environment.parsed_options
    path = summary_path(getattr(options, "csv_prefix", None))
    if path is not None:
        # locust rewrites <prefix>_stats.csv once a second and not at exit: gateway sessions
        # report propagation as they end, so write the final rows now
        final_stats_csv(environment, f"{options.csv_prefix}_stats.csv")
        write_summary(path, {
            "verdict": verdict, "breaches": breaches, "slo": SLO, "rows": summary,
            "run": RUN, "scenario": SCENARIO, "host": environment.host,
            "policy": {"id": POLICY_ID, "at_end": retired},
            "requests": environment.stats.total.num_requests,
            "failures": environment.stats.total.num_failures,
        })  # fmt: skip
        log.info("SLO verdict %s written to %s", verdict, path)
    if breaches:
        for breach in breaches:
            log.error("SLO breached: %s", breach)
        environment.process_exit_code = 3
    else:
        log.info("all SLOs hold (%s)", ", ".join(f"{k}={v:g}" for k, v in SLO.items()))
        environment.process_exit_code = 0

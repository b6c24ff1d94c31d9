"""The load test's voice sessions: one live session at a time per user (connect, run for its
lifetime, report, close, repeat) through the gateway (``StreamingUser``, ``AgentUser``, sending
real-time PCM) or on the control channel (``ControlUser``, reporting ``applied``)."""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Callable
from typing import Any

import gevent
import requests
import websocket  # websocket-client: a locust dependency (python-socketio[client]), gevent-safe
from locust import User, between, task
from locust.env import Environment
from locust.runners import STATE_CLEANUP, STATE_STOPPED, STATE_STOPPING
from locust.user.users import LOCUST_STATE_STOPPING
from payloads import AGENT_RATE, FRAME_MS, STREAMING_RATE, find_marker, pcm_silence, pcm_tone
from run_state import LIVE_CONTROL, PUBLISHED, SessionError, fire
from scenario import (
    API_KEY,
    AUDIO,
    CONNECT_TIMEOUT_S,
    EMULATOR_URL,
    MODEL,
    POLICY_ID,
    RUN,
    SESSION_S,
    TOKEN,
    WEIGHTS,
)

__all__ = [
    "PAUSE_MS",
    "TURN_MS",
    "AgentUser",
    "ControlUser",
    "SessionUser",
    "StreamingUser",
]


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
                fire(
                    self.environment,
                    "WS",
                    f"connect {self.kind}",
                    (time.time() - started) * 1000,
                    exc,
                )
                self._close()
                return
            self.established = time.time()
            fire(
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
        fire(self.environment, "WS", f"{what} {self.kind}", 0, SessionError(detail[:300]))

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
            fire(self.environment, "PUSH", f"propagation {self.kind}", ms)


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
                        fire(
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

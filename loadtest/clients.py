"""Benchmark client processes: many WebSocket connections per process, driven by commands.

``ClientPool(procs)`` starts ``procs`` worker processes (``spawn``); each runs one asyncio
loop (uvloop when installed) with raw ``websockets`` clients and no permessage-deflate.
The benchmark sends the same command to every worker (``pool.call``) and gets one answer per
worker. Receipt times are ``time.time()`` taken in the worker the moment a frame is read,
so they compare with the publish wall time taken in the benchmark process (same machine).

Commands (each answered with a dict):
  open      open ``count`` connections to ``url`` (optional first frame, optional expected
            first message type, optional ``source`` address to bind: loopback offers ~28,000
            ephemeral ports per source address and destination), then start one reader per
            connection
  arm       receipts are cleared; the next frame that contains ``marker`` is timestamped
  collect   wait (bounded) until every live connection has a receipt; answers the times
  audio     send real-time 50 ms PCM frames (tone/silence pattern) for ``seconds``,
            timestamp every final ``Turn``
  reconnect at wall time ``at`` every connection closes and reopens to ``url``; answers how
            long each took until its expected first message
  storm     open ``count`` connections to ``url`` (or, with ``after_close``, reopen each
            current one as soon as its server closed it: a killed replica) and time each until
            the first frame that carries ``marker`` (its config is current)
  close     close every connection
  exit      stop the worker
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback import LOOPBACK, raise_nofile
from payloads import FRAME_MS, STREAMING_RATE, pcm_silence, pcm_tone

CALL_TIMEOUT_S = 600.0


@dataclass(eq=False)
class Conn:
    ws: Any
    ident: str = ""
    got: float | None = None
    closed: bool = False
    auto_ack: bool = False  # control channel: answer each push with "applied"
    frames: list[float] = field(default_factory=list)  # perf_counter at each audio send
    turns: list[tuple[int, float]] = field(default_factory=list)  # final Turn: (order, perf)
    reader: asyncio.Task[None] | None = None
    seen: int = 0  # text frames read by the reader


class Worker:
    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.marker: str | None = None
        self.sample: str | None = None
        self.errors: list[str] = []

    # -- connections -------------------------------------------------------------------
    async def _connect(
        self,
        url: str,
        headers: dict[str, str],
        first: str | None,
        expect: str | None,
        timeout: float,
        source: str | None = None,
    ) -> Conn:
        from websockets.asyncio.client import connect

        extra: dict[str, Any] = {"local_addr": (source, 0)} if source else {}
        ws = await connect(
            url,
            additional_headers=headers,
            compression=None,
            ping_interval=None,
            open_timeout=timeout,
            close_timeout=2,
            max_size=2**22,
            **extra,
        )
        conn = Conn(ws)
        try:
            if first is not None:
                await ws.send(first)
            if expect is not None:
                async with asyncio.timeout(timeout):
                    while True:
                        msg = json.loads(await ws.recv())
                        if msg.get("type") == expect:
                            conn.ident = str(msg.get("session_id") or msg.get("id") or "")
                            break
                        if msg.get("type") in ("error", "Error", "session.error"):
                            raise RuntimeError(f"refused: {msg}")
        except BaseException:
            await ws.close()
            raise
        return conn

    async def _reader(self, conn: Conn) -> None:
        try:
            async for msg in conn.ws:
                now = time.time()
                if not isinstance(msg, str):
                    continue
                conn.seen += 1
                marker = self.marker
                if marker is not None and conn.got is None and marker in msg:
                    conn.got = now
                    if self.sample is None:
                        self.sample = msg
                if '"end_of_turn": true' in msg or '"end_of_turn":true' in msg:
                    frame = json.loads(msg)
                    if frame.get("type") == "Turn":
                        conn.turns.append((int(frame.get("turn_order", -1)), time.perf_counter()))
                elif conn.auto_ack and msg.startswith('{"type":"push"'):
                    version = json.loads(msg)["version"]
                    await conn.ws.send(json.dumps({"type": "applied", "version": version}))
        except Exception:  # closed under us: counted by ``closed``
            pass
        finally:
            conn.closed = True

    async def open(self, a: dict[str, Any]) -> dict[str, Any]:
        gate = asyncio.Semaphore(int(a.get("concurrency", 100)))
        errors: list[str] = []
        timeout = float(a.get("timeout", 60))

        async def one(i: int) -> Conn | None:
            async with gate:
                first = a.get("first")
                if first is not None:
                    first = first.replace("{i}", str(i))
                try:
                    return await self._connect(
                        a["url"],
                        a.get("headers", {}),
                        first,
                        a.get("expect"),
                        timeout,
                        a.get("source"),
                    )
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    return None

        started = time.perf_counter()
        results = await asyncio.gather(*(one(i + int(a.get("base", 0))) for i in range(a["count"])))
        elapsed = time.perf_counter() - started
        fresh = [c for c in results if c is not None]
        for conn in fresh:
            conn.auto_ack = bool(a.get("auto_ack", False))
            conn.reader = asyncio.get_running_loop().create_task(self._reader(conn))
        self.conns.extend(fresh)
        return {
            "opened": len(fresh),
            "errors": len(errors),
            "error_samples": errors[:3],
            "ids": [c.ident for c in fresh],
            "open_s": elapsed,
        }

    async def arm(self, a: dict[str, Any]) -> dict[str, Any]:
        self.marker = a["marker"]
        self.sample = None
        for conn in self.conns:
            conn.got = None
        return {"armed": len(self.conns)}

    async def collect(self, a: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + float(a.get("timeout", 30))
        while time.monotonic() < deadline:
            if all(c.got is not None or c.closed for c in self.conns):
                break
            await asyncio.sleep(0.01)
        times = [c.got for c in self.conns if c.got is not None]
        missing = sum(1 for c in self.conns if c.got is None and not c.closed)
        closed = sum(1 for c in self.conns if c.closed)
        return {"times": times, "missing": missing, "closed": closed, "sample": self.sample}

    async def close(self, a: dict[str, Any]) -> dict[str, Any]:
        gate = asyncio.Semaphore(int(a.get("concurrency", 500)))

        async def one(conn: Conn) -> None:
            async with gate:
                with contextlib.suppress(Exception):
                    await conn.ws.close()
                if conn.reader is not None:
                    conn.reader.cancel()
                    with contextlib.suppress(BaseException):
                        await conn.reader

        started = time.perf_counter()
        await asyncio.gather(*(one(c) for c in self.conns))
        count, self.conns = len(self.conns), []
        return {"closed": count, "close_s": time.perf_counter() - started}

    # -- reconnect ------------------------------------------------------------------------
    async def reconnect(self, a: dict[str, Any]) -> dict[str, Any]:
        gate = asyncio.Semaphore(int(a.get("concurrency", 200)))
        at = float(a["at"])
        await asyncio.sleep(max(0.0, at - time.time()))
        errors: list[str] = []
        done: list[float] = []

        async def one(conn: Conn, i: int) -> Conn | None:
            async with gate:
                with contextlib.suppress(Exception):
                    await conn.ws.close()
                if conn.reader is not None:
                    conn.reader.cancel()
                first = a.get("first")
                if first is not None:
                    first = first.replace("{i}", str(i))
                try:
                    fresh = await self._connect(
                        a["url"],
                        a.get("headers", {}),
                        first,
                        a.get("expect"),
                        float(a.get("timeout", 60)),
                    )
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    return None
                done.append(time.time())
                return fresh

        results = await asyncio.gather(*(one(c, i) for i, c in enumerate(self.conns)))
        self.conns = [c for c in results if c is not None]
        for conn in self.conns:
            conn.reader = asyncio.get_running_loop().create_task(self._reader(conn))
        return {
            "times": done,
            "errors": len(errors),
            "error_samples": errors[:3],
            "ids": [c.ident for c in self.conns],
        }

    async def storm(self, a: dict[str, Any]) -> dict[str, Any]:
        """(Re)connect and time each connection to its first frame carrying ``marker``:
        wall-clock times, so the benchmark measures from its own start (a connect burst) or
        from the kill of the server the old connections were on (``after_close``)."""
        gate = asyncio.Semaphore(int(a.get("concurrency", 200)))
        timeout = float(a.get("timeout", 120))
        self.marker, self.sample = a["marker"], None
        errors: list[str] = []
        old: list[Conn | None] = list(self.conns) if a.get("after_close") else [None] * a["count"]

        async def one(prev: Conn | None, i: int) -> Conn | None:
            if prev is not None and prev.reader is not None:  # wait for the server's close
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(prev.reader), timeout)
            first = a.get("first")
            if first is not None:
                first = first.replace("{i}", str(i))
            async with gate:
                try:
                    conn = await self._connect(
                        a["url"], a.get("headers", {}), first, a.get("expect"), timeout
                    )
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    return None
            conn.auto_ack = True
            conn.reader = asyncio.get_running_loop().create_task(self._reader(conn))
            return conn

        base = int(a.get("base", 0))
        results = await asyncio.gather(*(one(c, base + i) for i, c in enumerate(old)))
        fresh = [c for c in results if c is not None]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(c.got or c.closed for c in fresh):
            await asyncio.sleep(0.01)
        self.conns = fresh if a.get("after_close") else self.conns + fresh
        return {
            "times": [c.got for c in fresh if c.got is not None],
            "missing": sum(1 for c in fresh if c.got is None),
            "closed": sum(1 for c in fresh if c.got is None and c.closed),
            "missing_seen": sorted({c.seen for c in fresh if c.got is None}),
            "errors": len(errors),
            "error_samples": errors[:3],
        }

    # -- real-time audio ------------------------------------------------------------------
    async def audio(self, a: dict[str, Any]) -> dict[str, Any]:
        """Real-time 50 ms frames: ``tone_ms`` of tone then ``silence_ms`` of silence, repeated."""
        seconds = float(a["seconds"])
        tone_ms, silence_ms = int(a.get("tone_ms", 1000)), int(a.get("silence_ms", 1000))
        rate = int(a.get("rate", STREAMING_RATE))
        tone, quiet = pcm_tone(FRAME_MS, rate), pcm_silence(FRAME_MS, rate)
        period = tone_ms + silence_ms
        frames = int(seconds * 1000 // FRAME_MS)
        groups = 10  # connections are spread over the 50 ms tick, 5 ms apart
        errors: list[str] = []
        for conn in self.conns:
            conn.frames, conn.turns = [], []
        start = time.perf_counter() + 0.2

        async def ticker(members: list[Conn], phase: float) -> None:
            for k in range(frames):
                target = start + phase + k * FRAME_MS / 1000
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                data = tone if (k * FRAME_MS) % period < tone_ms else quiet
                for conn in members:
                    if conn.closed:
                        continue
                    conn.frames.append(time.perf_counter())
                    try:
                        await conn.ws.send(data)
                    except Exception as exc:
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                        conn.closed = True

        await asyncio.gather(
            *(ticker(self.conns[g::groups], g * FRAME_MS / 1000 / groups) for g in range(groups))
        )
        await asyncio.sleep(float(a.get("drain_s", 1.5)))
        return {
            "sessions": [{"id": c.ident, "frames": c.frames, "turns": c.turns} for c in self.conns],
            "errors": len(errors),
            "error_samples": errors[:3],
            "closed": sum(1 for c in self.conns if c.closed),
        }


async def _serve(conn: Connection) -> None:
    worker = Worker()
    loop = asyncio.get_running_loop()
    while True:
        cmd, args = await loop.run_in_executor(None, conn.recv)
        if cmd == "exit":
            await worker.close({})
            conn.send(("ok", {}))
            return
        try:
            result = await getattr(worker, cmd)(args)
            conn.send(("ok", result))
        except Exception:
            conn.send(("error", traceback.format_exc()))


def worker_main(conn: Connection) -> None:
    raise_nofile()
    try:
        import uvloop

        uvloop.run(_serve(conn))
    except ImportError:
        asyncio.run(_serve(conn))


class ClientPool:
    """``procs`` worker processes; ``call`` sends one command to each and gathers answers."""

    def __init__(self, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs: list[Any] = []
        for i in range(max(1, procs)):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main, args=(child,), name=f"bench-client-{i}", daemon=True
            )
            proc.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(proc)

    @property
    def size(self) -> int:
        return len(self._pipes)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def cpu_s(self) -> float:
        """CPU seconds (user+system) the client processes used so far."""
        ticks = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def split(self, total: int) -> list[int]:
        base, extra = divmod(total, self.size)
        return [base + (1 if i < extra else 0) for i in range(self.size)]

    def call(
        self, cmd: str, args: dict[str, Any] | list[dict[str, Any]], timeout: float = CALL_TIMEOUT_S
    ) -> list[dict[str, Any]]:
        per = args if isinstance(args, list) else [args] * self.size
        for pipe, a in zip(self._pipes, per, strict=True):
            pipe.send((cmd, a))
        out = []
        deadline = time.monotonic() + timeout
        for pipe in self._pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"client worker did not answer {cmd!r} in {timeout}s")
            status, result = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"client worker failed {cmd!r}:\n{result}")
            out.append(result)
        return out

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(Exception):
                pipe.send(("exit", {}))
        for pipe, proc in zip(self._pipes, self._procs, strict=True):
            with contextlib.suppress(Exception):
                if pipe.poll(30):
                    pipe.recv()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            pipe.close()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ws_url(base: str, path: str) -> str:
    if not base.startswith(f"ws://{LOOPBACK}:"):
        raise ValueError(f"refusing {base}: benchmarks only connect to {LOOPBACK}")
    return base + path

"""Bare servers the benchmarks measure the control plane against (same machine, same run).

    python loadtest/baseline_server.py --mode broadcast --port P
        ``websockets`` server. Every connection is held; a text frame sent on ``/trigger`` is
        broadcast as is to every other connection with ``websockets.broadcast`` (the fan-out
        floor of DESIGN §6) and answered with ``{"sent": n, "elapsed_s": s}``.
    python loadtest/baseline_server.py --mode hold --port P
        aiohttp server (the control plane's own stack): answers the first text frame of each
        connection with one small JSON frame and holds the socket (control-channel floor).
    python loadtest/baseline_server.py --mode proxy --port P --upstream ws://127.0.0.1:E
        aiohttp relay with no logic: ``/v3/ws`` and ``/v1/ws`` are proxied frame by frame to
        the upstream with one reader task per session, like the gateway (gateway floor).
        ``POST /_push`` with a text body writes that text as one frame on every upstream leg
        (``send_str`` in a loop, the way a push reaches each session's upstream) and answers
        ``{"sent": n, "elapsed_s": s}`` once every frame is handed over (the fair floor of a
        gateway push: ``bench_gateway.py``).

All modes: uvloop when installed, no permessage-deflate, open-files limit raised, loopback
only, exit on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback import LOOPBACK, raise_nofile


async def run_broadcast(port: int, stop: asyncio.Event) -> None:
    import websockets
    from websockets.asyncio.server import ServerConnection, serve

    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        if path.startswith("/trigger"):
            async for message in ws:
                started = time.perf_counter()
                websockets.broadcast(clients, message)
                elapsed = time.perf_counter() - started
                await ws.send(json.dumps({"sent": len(clients), "elapsed_s": elapsed}))
            return
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async with serve(
        handler, LOOPBACK, port, compression=None, ping_interval=None, max_queue=None, backlog=4096
    ):
        await stop.wait()


async def run_aiohttp(port: int, mode: str, upstream: str | None, stop: asyncio.Event) -> None:
    import aiohttp
    from aiohttp import WSMsgType, web

    app = web.Application()
    holder: list[aiohttp.ClientSession] = []
    legs: dict[aiohttp.ClientWebSocketResponse, None] = {}  # proxy: open upstream legs, in order

    async def hold(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, heartbeat=None)
        await ws.prepare(request)
        first = await ws.receive()
        if first.type == WSMsgType.TEXT:
            await ws.send_str(json.dumps({"type": "registered", "session_id": "x", "version": 1}))
        async for _ in ws:
            pass
        return ws

    async def proxy(request: web.Request) -> web.StreamResponse:
        assert upstream is not None
        headers = {h: request.headers[h] for h in ("Authorization",) if h in request.headers}
        url = upstream + request.path + ("?" + request.query_string if request.query_string else "")
        up = await holder[0].ws_connect(
            url, headers=headers, autoclose=False, max_msg_size=0, compress=0
        )
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)

        async def from_upstream() -> None:
            with contextlib.suppress(Exception):
                async for msg in up:
                    if msg.type == WSMsgType.BINARY:
                        await ws.send_bytes(msg.data)
                    elif msg.type == WSMsgType.TEXT:
                        await ws.send_str(msg.data)
            if not ws.closed:
                await ws.close()

        reader = asyncio.get_running_loop().create_task(from_upstream())
        legs[up] = None
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await up.send_bytes(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await up.send_str(msg.data)
        finally:
            legs.pop(up, None)
            with contextlib.suppress(Exception):
                await up.close()
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        return ws

    async def push(request: web.Request) -> web.Response:
        frame = await request.text()
        started = time.perf_counter()
        sent = 0
        for up in list(legs):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await up.send_str(frame)
                sent += 1
        elapsed = time.perf_counter() - started
        return web.json_response({"sent": sent, "elapsed_s": elapsed})

    if mode == "hold":
        app.router.add_get("/v1/control", hold)
    else:
        app.router.add_get("/v3/ws", proxy)
        app.router.add_get("/v1/ws", proxy)
        app.router.add_post("/_push", push)

    async def startup(_: web.Application) -> None:
        # limit=0: a WebSocket holds its connector slot for life (the default allows 100)
        holder.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))

    async def cleanup(_: web.Application) -> None:
        for http in holder:
            await http.close()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, port, backlog=4096)
    await site.start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def main_async(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.mode == "broadcast":
        await run_broadcast(args.port, stop)
    else:
        await run_aiohttp(args.port, args.mode, args.upstream, stop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("broadcast", "hold", "proxy"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", help="proxy mode: ws://127.0.0.1:PORT of the emulator")
    args = parser.parse_args()
    if args.mode == "proxy" and not (args.upstream or "").startswith(f"ws://{LOOPBACK}:"):
        parser.error(f"--upstream must be ws://{LOOPBACK}:PORT")
    raise_nofile()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``GET /v1/policies/{policy_id}/rollout/stream``: a policy's rollout status as server-sent
events (docs/api.md#rollout-stream), for the web console's policy page and
``controlplane policy rollout ID --watch``.

One event ``rollout`` (``data``: the same JSON as ``GET /v1/policies/{id}/rollout``) at once,
then whenever the answer changes; the status is read every :data:`CHECK_S`, so changes are
coalesced (at most four events a second) and a connection holds at most one pending answer
(the latest: no queue grows behind a slow reader; a write that waits longer than
:data:`WRITE_TIMEOUT_S` ends the stream). A ``: heartbeat`` comment every :data:`HEARTBEAT_S`
of silence keeps proxies from timing the connection out. The stream ends with an event
``end`` (``data``: ``{"reason": ...}``): ``draining`` when the control plane shuts down,
``not_found`` when the policy is gone, ``token_revoked`` when the caller's token is revoked
(or no longer viewer) while it streams, another error's code when the status cannot be read.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

from aiohttp import web

from controlplane.api.auth import PRINCIPAL, TOKENS, Role, shown_rollout
from controlplane.api.ports import ControlPlaneAPI
from controlplane.errors import ControlPlaneError, NotFound

__all__ = ["CHECK_S", "HEARTBEAT_S", "WRITE_TIMEOUT_S", "rollout_stream"]

CHECK_S: Final = 0.25
HEARTBEAT_S: Final = 15.0
WRITE_TIMEOUT_S: Final = 10.0


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def rollout_stream(
    request: web.Request, service: ControlPlaneAPI, policy_id: str
) -> web.StreamResponse:
    """Stream ``policy_id``'s rollout status; an unknown policy is a 404 before the stream."""
    body = await service.rollout_status(policy_id)  # NotFound -> 404 (error middleware)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    loop = asyncio.get_running_loop()

    async def send(chunk: bytes) -> None:
        await asyncio.wait_for(response.write(chunk), WRITE_TIMEOUT_S)

    tokens, principal = request.config_dict[TOKENS], request[PRINCIPAL]
    last: Any = None
    quiet_since = loop.time()
    reason = "draining"
    try:
        while not service.draining:
            if body != last:
                await send(_event("rollout", shown_rollout(body, principal.role)))
                last, quiet_since = body, loop.time()
            elif loop.time() - quiet_since >= HEARTBEAT_S:
                await send(b": heartbeat\n\n")
                quiet_since = loop.time()
            await asyncio.sleep(CHECK_S)
            if request.transport is None or request.transport.is_closing():
                return response  # the client went away
            role = tokens.role_now(principal.digest)
            if role is None or role < Role.VIEWER:
                reason = "token_revoked"
                break
            try:
                body = await service.rollout_status(policy_id)
            except NotFound:
                reason = "not_found"
                break
            except ControlPlaneError as exc:  # headers are sent: no error response any more
                reason = exc.code
                break
        await send(_event("end", {"reason": reason}))
    except (ConnectionError, TimeoutError):
        pass  # the client went away or stopped reading: nothing left to tell it
    return response

"""Owner routing: a per-session action asked of one replica runs on the replica that holds
the session's socket (the owner, from the shared registry), and answers with its result.

The transport is request/reply (``controlplane.cluster.nats_bus.NatsRpc`` on
``<prefix>.node.<node>.<action>``: one subscription per replica, never per session). The
reply envelope is ``{"result": ...}`` or ``{"error": {"status", "code", "message",
"details"}}``; an error is raised again on the asking replica as the same
``controlplane.errors`` type, so the HTTP answer is the owner's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from controlplane.errors import (
    BadRequest,
    Conflict,
    ControlPlaneError,
    Forbidden,
    NotFound,
    Unavailable,
    ValidationFailed,
)
from sessions.errors import SessionError

__all__ = ["Action", "OwnerRouter", "Rpc", "RpcHandler"]

log = logging.getLogger(__name__)

RpcHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
Action = Callable[[dict[str, Any]], Awaitable[Any]]

_BY_STATUS: dict[int, type[ControlPlaneError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
    503: Unavailable,
}


class Rpc(Protocol):
    async def serve(self, node: str, handler: RpcHandler) -> None: ...

    async def request(self, node: str, action: str, payload: dict[str, Any]) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class OwnerRouter:
    def __init__(self, rpc: Rpc, node_id: str) -> None:
        self._rpc = rpc
        self.node_id = node_id
        self._actions: dict[str, Action] = {}

    def handle(self, name: str, action: Action) -> None:
        """Serve ``name`` for other replicas (``action`` runs locally and never re-routes)."""
        self._actions[name] = action

    async def start(self) -> None:
        await self._rpc.serve(self.node_id, self._dispatch)

    async def close(self) -> None:
        await self._rpc.close()

    async def call(self, node: str, name: str, payload: dict[str, Any]) -> Any:
        """Run ``name`` on ``node``; raises the owner's error (Unavailable if it is gone)."""
        reply = await self._rpc.request(node, name, payload)
        error = reply.get("error")
        if isinstance(error, dict):
            status = int(error.get("status", 500))
            kind = _BY_STATUS.get(status, ControlPlaneError)
            details = error.get("details")
            raise kind(
                str(error.get("message", "error on the owner replica")),
                code=str(error.get("code")) if error.get("code") else None,
                details=details if isinstance(details, dict) else None,
            )
        return reply.get("result")

    async def _dispatch(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        action = self._actions.get(name)
        if action is None:
            return _error(NotFound(f"unknown action {name!r}", code="unknown_action"))
        try:
            return {"result": await action(payload)}
        except ControlPlaneError as exc:
            return _error(exc)
        except SessionError as exc:
            kind = Unavailable if exc.retryable else Conflict
            return _error(kind(str(exc), code="session_error"))
        except (KeyError, TypeError, ValueError) as exc:
            return _error(BadRequest(f"bad {name} request: {exc!r}"))
        except Exception:
            log.exception("owner request %s failed", name)
            return _error(ControlPlaneError(f"{name} failed on replica {self.node_id}"))


def _error(exc: ControlPlaneError) -> dict[str, Any]:
    return {"error": {"status": exc.status, "code": exc.code, "message": exc.message,
                      "details": exc.details}}  # fmt: skip

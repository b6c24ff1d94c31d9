"""The NATS connection of a replica (or a CLI command), part of the NATS adapter
(``controlplane.cluster.nats_bus`` holds the module map).

Half-dead servers (issue #19 item 2). A paused nats-server (SIGSTOP) keeps its sockets open
and answers nothing. Two things made the client a zombie for ~5 minutes after it resumed:

- nats-py's PING interval defaults to 2 minutes (2 unanswered PINGs declare the connection
  stale), so nothing noticed the silence. We PING every ``nats_ping_interval_s`` (default 2 s):
  a silent server is torn down after ~3 intervals and the client reconnects on its own.
- nats-py 2.16 ``Client._process_pong`` pops the oldest PING waiter and calls ``set_result``
  on it; a ``flush()`` that timed out has cancelled that future but left it in the queue, so
  the late PONG raised ``InvalidStateError`` and killed the read loop: the connection still
  said connected and read nothing again. The same class of defect as nats-io/nats.py#624
  (flusher task stopped by ``InvalidStateError`` on a cancelled future, fixed in #636) and
  nats-io/nats.py2#36 (PONG waiters out of step after a flush timeout); stale detection not
  tearing a connection down is nats-io/nats.py#671. ``_Client`` below patches it: a PONG
  answers the oldest PING, and a waiter that gave up is simply dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from controlplane.config import Settings
from controlplane.errors import Unavailable
from sessions.clock import Clock, SystemClock

__all__ = ["NatsConnection", "redact"]

log = logging.getLogger(__name__)

MAX_OUTSTANDING_PINGS = 2
DISCONNECTED_GRACE_S = 1.0  # a reconnection faster than this is not worth a readiness flap


class _Client(NatsClient):
    """nats-py's client with the late-PONG defect patched (module docstring)."""

    async def _process_pong(self) -> None:
        if self._pongs:
            future = self._pongs.pop(0)  # this PONG answers the oldest PING ...
            if not future.done():  # ... whose waiter may have given up (flush timeout)
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0


def redact(url: str) -> str:
    """A URL fit for logs: any password or token is replaced by ``***``."""
    parts = []
    for one in url.split(","):
        split = urlsplit(one.strip())
        if split.username is not None or split.password is not None:
            host = split.hostname or ""
            if split.port is not None:
                host = f"{host}:{split.port}"
            split = split._replace(netloc=f"***@{host}")
        parts.append(urlunsplit(split))
    return ",".join(parts)


class NatsConnection:
    """One NATS connection per replica (or per CLI command). ``connect()`` waits up to
    ``nats_connect_timeout_s`` for the first connection; afterwards the client reconnects
    forever on its own and ``connected`` says whether it is up right now."""

    def __init__(self, settings: Settings, *, name: str, clock: Clock | None = None) -> None:
        if not settings.nats_url:
            raise ValueError("NatsConnection needs settings.nats_url")
        self.settings = settings
        self.url = settings.nats_url
        self._name = name
        self._nc: NatsClient | None = None
        self._closing = False
        self._reconnecting = False
        self._attempt_said = False  # the first connect's failed attempt was logged
        self._clock = clock or SystemClock()
        self._down_since: float | None = None  # monotonic, while disconnected after a connect
        self._up = asyncio.Event()  # set while connected

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def client(self) -> NatsClient:
        if self._nc is None:
            raise Unavailable("not connected to NATS", code="nats_unavailable")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        return self.client.jetstream(timeout=self.settings.nats_request_timeout_s)

    async def wait_up(self, at_most_s: float) -> None:
        """Return once connected, or after ``at_most_s`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most_s):
                await self._up.wait()

    async def connect(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "servers": [u.strip() for u in self.url.split(",") if u.strip()],
            "name": self._name,
            "connect_timeout": 2,
            "reconnect_time_wait": 1,
            "max_reconnect_attempts": -1,
            "ping_interval": s.nats_ping_interval_s,
            "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if s.nats_creds is not None:
            options["user_credentials"] = str(_readable(s.nats_creds, "--nats-creds"))
        if s.nats_nkey is not None:
            options["nkeys_seed"] = str(_readable(s.nats_nkey, "--nats-nkey"))
        try:
            nc = _Client()
            await asyncio.wait_for(nc.connect(**options), s.nats_connect_timeout_s)
            self._nc = nc
        except TimeoutError:
            raise Unavailable(
                f"cannot reach NATS at {redact(self.url)} within {s.nats_connect_timeout_s:.0f}s",
                code="nats_unavailable",
            ) from None
        except (nats.errors.Error, OSError) as exc:
            raise Unavailable(
                f"cannot connect to NATS at {redact(self.url)}: {exc}", code="nats_unavailable"
            ) from exc
        except ModuleNotFoundError as exc:  # nkeys: needed for creds / nkey authentication
            raise Unavailable(
                f"NATS credentials need the optional package {exc.name!r} (pip install nkeys)",
                code="nats_unavailable",
            ) from exc
        self._up.set()
        log.info("connected to NATS at %s", redact(self.url))

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        self._closing = True
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _on_error(self, exc: Exception) -> None:
        # while (re)connecting, every failed attempt reports here: say it once, then quietly
        # (the first connect retried once a second: 30 identical warnings before its error)
        failed_attempt = isinstance(exc, OSError)
        quiet = failed_attempt and (self._reconnecting or self._attempt_said)
        if failed_attempt and self._nc is None and not self._attempt_said:
            self._attempt_said = True
            log.warning("NATS: %s; retrying for up to %.0fs", exc or type(exc).__name__,
                        self.settings.nats_connect_timeout_s)  # fmt: skip
            return
        log.log(logging.DEBUG if quiet else logging.WARNING, "NATS: %s", exc or type(exc).__name__)

    def problem(self) -> str | None:
        """For ``/readyz``: the connection has been down longer than a blip (publishing
        answers 503 and no policy event arrives meanwhile); None while connected."""
        since = self._down_since
        if since is None or self.connected:
            return None
        down = self._clock.monotonic() - since
        if down <= DISCONNECTED_GRACE_S:
            return None
        return f"NATS disconnected for {down:.1f}s; reconnecting"

    async def _on_disconnected(self) -> None:
        self._up.clear()
        if not self._closing:
            self._reconnecting = True
            self._down_since = self._clock.monotonic()
            log.warning("NATS disconnected from %s; reconnecting", redact(self.url))

    async def _on_reconnected(self) -> None:
        self._reconnecting = False
        self._down_since = None
        self._up.set()
        log.info("NATS reconnected")


def _readable(path: Any, flag: str) -> Any:
    if not path.is_file():
        raise Unavailable(f"{flag} {path} is not a readable file", code="nats_unavailable")
    return path

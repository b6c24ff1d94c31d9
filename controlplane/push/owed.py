"""Sessions owed their desired config, sans-I/O.

A push that never reached its session ends ``rejected`` once, with the reason, and nothing
else would move the session until the next policy change. Two causes that pass by
themselves:

- ``socket``: its write waited for a congested socket longer than ``send_timeout_s`` (the app
  stopped reading) and was given up before its frame was handed to the socket ("send timed
  out"). A write given up AFTER the transport handed the frame over (aiohttp's ``send_str``
  writes, then waits for the drain: ``transport.handed``) is not owed: the frame reaches the
  upstream once it reads, so it is in doubt (``unverified``), never re-sent
  (``sending.Sender._gave_up``);
- ``log``: its version-log entry could not be made durable (disk full, an I/O error, a
  read-only file system), so its frame was not sent: no frame leaves unrecorded
  (``controlplane.push.write_ahead``).

The session is owed what it missed. The engine's sweeper asks ``due()`` on every sweep and
re-sends the desired config to each session it returns (``PushState.resend``: a new version,
one ``sent`` entry and one ending, like any push) once the cause is gone: the version log
writes again and the session's socket is not congested (the app read again). A session that
ends, or gets a push meanwhile, is simply not owed any more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from controlplane.push.live import LiveSession

__all__ = ["Cause", "Owed"]

Cause = Literal["socket", "log"]


class Owed:
    __slots__ = ("_sessions",)

    def __init__(self) -> None:
        self._sessions: dict[LiveSession, Cause] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, ls: object) -> bool:
        return ls in self._sessions

    def add(self, ls: LiveSession, cause: Cause) -> None:
        self._sessions[ls] = cause

    def forget(self, ls: LiveSession) -> None:
        self._sessions.pop(ls, None)

    def due(self, log_writable: bool, live: Callable[[LiveSession], bool]) -> list[LiveSession]:
        """The owed sessions that can be re-sent to now, no longer owed: none while the log
        fails (a re-send would be refused again); else every one still ``live`` whose
        socket is not congested. Sessions no longer live are dropped."""
        if not self._sessions or not log_writable:
            return []
        due: list[LiveSession] = []
        for ls in list(self._sessions):
            if not live(ls):
                del self._sessions[ls]
            elif not ls.transport.congested():
                del self._sessions[ls]
                due.append(ls)
        return due

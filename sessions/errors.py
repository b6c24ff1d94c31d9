"""Errors raised by the sessions layer.

Tree::

    SessionError                    root
    ├── UnknownSession              no such session id (permanent)
    ├── SessionIdTaken              the id is live, or its trail belongs to another node
    ├── DialectError                a wire message cannot be parsed or encoded (permanent)
    │   └── WireLimitError          a value exceeds the dialect's limit (names field and limit)
    ├── VersionLogError             the log cannot be appended or read
    │   ├── ChainBroken             verify() found tampering (names the first bad seq)
    │   └── NotRebuildable          no config at that instant (before the session, or no
    │                               connect config in its log: `audit at`)
    └── BackendUnavailable          Redis or disk failed; retryable
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendUnavailable",
    "ChainBroken",
    "DialectError",
    "NotRebuildable",
    "SessionError",
    "SessionIdTaken",
    "UnknownSession",
    "VersionLogError",
    "WireLimitError",
]


class SessionError(Exception):
    retryable = False


class UnknownSession(SessionError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"unknown session {session_id!r}")
        self.session_id = session_id


class SessionIdTaken(SessionError):
    """A session id is claimed cluster-wide: it is live (on any node), or another node holds
    its durable trail (``cp.audit.<id>``, one writer per trail). Permanent: use another id."""

    def __init__(self, session_id: str, *, holder: str | None) -> None:
        where = "is live" if holder is None else f"is held by node {holder!r}"
        super().__init__(f"session id {session_id!r} {where}; a session id is used once")
        self.session_id = session_id
        self.holder = holder


class DialectError(SessionError):
    def __init__(self, message: str, *, dialect: str, field: str | None = None) -> None:
        super().__init__(message)
        self.dialect = dialect
        self.field = field


class WireLimitError(DialectError):
    def __init__(self, message: str, *, dialect: str, field: str, limit: Any) -> None:
        super().__init__(message, dialect=dialect, field=field)
        self.limit = limit


class VersionLogError(SessionError):
    pass


class ChainBroken(VersionLogError):
    def __init__(self, message: str, *, session_id: str, seq: int | None) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.seq = seq


class NotRebuildable(VersionLogError):
    def __init__(self, message: str, *, session_id: str) -> None:
        super().__init__(message)
        self.session_id = session_id


class BackendUnavailable(SessionError):
    retryable = True

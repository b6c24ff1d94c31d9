"""Wire dialects, sans-I/O. One module per protocol; each starts with its limits table.

- ``streaming_v3``: AssemblyAI Universal Streaming v3 (``UpdateConfiguration``; no ack).
- ``voice_agent_v1``: AssemblyAI Voice Agent API (``session.update`` → ``session.updated``).
"""

from sessions.dialects.base import Dialect
from sessions.dialects.streaming_v3 import STREAMING_V3
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.errors import DialectError

__all__ = ["dialect_for"]

_KNOWN: dict[str, Dialect] = {d.name: d for d in (STREAMING_V3, VOICE_AGENT_V1)}


def dialect_for(kind: str) -> Dialect:
    """The codec for a session kind; ``DialectError`` for an unknown kind."""
    try:
        return _KNOWN[kind]
    except KeyError:
        names = ", ".join(sorted(_KNOWN))
        raise DialectError(
            f"unknown session kind {kind!r} (known: {names})", dialect=kind
        ) from None

"""Settings: one frozen object built from flags and ``CONTROLPLANE_*`` environment variables.

Flags win over the environment; the environment wins over defaults (DESIGN.md §4).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENV_PREFIX", "Settings", "parse_listen", "parse_tokens"]

ENV_PREFIX = "CONTROLPLANE_"
ROLES = ("viewer", "experimenter", "compliance", "admin")


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) -> (host, port); ValueError names the input."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {value!r} must be host:port, e.g. 127.0.0.1:8080")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"listen port {number} is outside 0-65535")
    return host.strip("[]") or "127.0.0.1", number


def parse_tokens(value: str) -> dict[str, str]:
    """``role:token,role:token`` -> {token: role}; raises ValueError (never echoing the token)."""
    tokens: dict[str, str] = {}
    for i, item in enumerate(part.strip() for part in value.replace("\n", ",").split(",")):
        if not item or item.startswith("#"):
            continue
        role, sep, token = item.partition(":")
        role = role.strip()
        token = token.strip()
        if not sep or not token:
            raise ValueError(f"token entry {i + 1} must be role:token")
        if role not in ROLES:
            raise ValueError(
                f"token entry {i + 1} has unknown role {role!r} (roles: {', '.join(ROLES)})"
            )
        tokens[token] = role
    return tokens


@dataclass(frozen=True)
class Settings:
    """Every setting of ``controlplane serve``; built once by the CLI, passed to app.build_app."""

    listen: str = "127.0.0.1:8080"
    upstream_streaming_url: str = "wss://streaming.assemblyai.com/v3/ws"
    upstream_agent_url: str = "wss://agents.assemblyai.com/v1/ws"
    nats_url: str | None = None
    redis_url: str | None = None
    node_id: str = field(default_factory=socket.gethostname)
    data_dir: Path = Path("./data")
    tokens_file: Path | None = None
    tokens: Mapping[str, str] = field(default_factory=dict)  # token -> role
    # push engine
    push_queue_size: int = 8
    push_concurrency: int = 256
    ack_timeout_s: float = 5.0
    next_turn_deadline_s: float = 10.0
    send_timeout_s: float = 5.0
    # shutdown
    shutdown_grace_s: float = 30.0
    # sockets
    websocket_compression: bool = False  # permessage-deflate off by default (DESIGN.md §6)
    max_client_message_bytes: int = 1024 * 1024
    # registry
    heartbeat_interval_s: float = 5.0
    session_ttl_s: float = 30.0

    def all_tokens(self) -> dict[str, str]:
        """Tokens from CONTROLPLANE_TOKENS plus the tokens file (re-read on each call)."""
        merged = dict(self.tokens)
        if self.tokens_file is not None:
            merged.update(parse_tokens(self.tokens_file.read_text(encoding="utf-8")))
        return merged

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Defaults < environment < explicit overrides (flags). Unset overrides are ``None``."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}

        def pick(name: str, convert: type | None = None) -> None:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = convert(raw) if convert else raw

        for name in (
            "listen",
            "upstream_streaming_url",
            "upstream_agent_url",
            "nats_url",
            "redis_url",
            "node_id",
        ):
            pick(name)
        pick("data_dir", Path)
        pick("tokens_file", Path)
        pick("shutdown_grace_s", float)
        pick("ack_timeout_s", float)
        raw_tokens = env.get(ENV_PREFIX + "TOKENS")
        if raw_tokens:
            values["tokens"] = parse_tokens(raw_tokens)
        compression = env.get(ENV_PREFIX + "WEBSOCKET_COMPRESSION")
        if compression:
            values["websocket_compression"] = compression.lower() in ("1", "true", "yes", "on")
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
        settings = cls(**values)  # type: ignore[arg-type]
        parse_listen(settings.listen)
        return settings

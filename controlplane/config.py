"""Settings: one frozen object built from flags and ``CONTROLPLANE_*`` environment variables.

Flags win over the environment; the environment wins over defaults (DESIGN.md §4).
Deployment modes (``Settings.check``; docs/distributed.md):

- no URL: embedded (memory registry, in-process bus, local JSONL audit);
- ``nats_url``: policies and durable audit through JetStream, each replica its own registry;
- ``nats_url`` + ``redis_url``: the full distributed mode (shared registry, owner routing);
- ``redis_url`` alone is refused: policies would not reach the other replicas.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.labels import parse_credential_labels
from controlplane.signing import SigningKeys
from controlplane.tls import tls_context
from sessions.checkpoints import load_private_key

__all__ = ["ENV_PREFIX", "Settings", "SettingsError", "parse_listen", "parse_tokens"]

ENV_PREFIX = "CONTROLPLANE_"
ROLES = ("viewer", "app", "experimenter", "compliance", "admin")


class SettingsError(ValueError):
    """A combination of settings that cannot work; the message says what to change."""


def _flag(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) -> (host, port); ValueError names the input."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
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
    # gateway: API key digests -> session labels (controlplane.labels)
    credential_labels_file: Path | None = None
    # TLS for every listener of ``serve`` (both or neither; PEM files)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # push engine
    push_queue_size: int = 8
    push_concurrency: int = 256
    ack_timeout_s: float = 5.0
    # what the Voice Agent upstream does with the rest of a session.update refused in part
    # (session.error with a param, e.g. immutable_field): "reject_message" (nothing applied)
    # or "apply_rest" (the rest applied, answered by a session.updated after the errors).
    # PROTOCOLS.md leaves it open; it must match the upstream (the emulator's immutable_policy)
    agent_partial_updates: str = "reject_message"
    next_turn_deadline_s: float = 10.0
    send_timeout_s: float = 5.0
    # shutdown
    shutdown_grace_s: float = 30.0
    # sockets
    websocket_compression: bool = False  # permessage-deflate off by default (DESIGN.md §6)
    max_client_message_bytes: int = 1024 * 1024
    # admission (controlplane.edges.admission, docs/reliability.md#connection-limits)
    first_message_timeout_s: float = 10.0  # first frame / register within this of the upgrade
    max_connections: int = 20_000  # gateway + control sockets per replica; more get 503
    client_update_burst: int = 10  # client configuration updates per session at once ...
    client_update_rate_per_s: float = 1.0  # ... and sustained
    # registry (Redis in distributed mode): a replica heartbeats every heartbeat_interval_s;
    # its sessions end with cause node_lost once no heartbeat came for session_ttl_s
    heartbeat_interval_s: float = 5.0
    session_ttl_s: float = 30.0
    redis_prefix: str = "cp:"
    # each Redis client's pool: at most this many connections; a command that finds them all
    # busy waits up to redis_pool_timeout_s for one (then the request fails, 503)
    redis_pool_size: int = 50
    redis_pool_timeout_s: float = 10.0
    # NATS (distributed mode); credentials files are paths, never inline secrets
    nats_creds: Path | None = None  # a .creds file (user JWT + nkey seed)
    nats_nkey: Path | None = None  # an nkey seed file
    nats_connect_timeout_s: float = 30.0  # give up starting when NATS is not reachable
    nats_request_timeout_s: float = 5.0  # JetStream API calls, publishes, owner requests
    # PING the server this often; 2 unanswered PINGs tear the connection down and reconnect
    # (nats-py's default of 120 s left a paused server unnoticed for minutes)
    nats_ping_interval_s: float = 2.0
    nats_subject_prefix: str = "cp"  # subjects <prefix>.policy.<id>, <prefix>.audit.<sid>
    nats_policy_stream: str = "CP_POLICY"
    nats_audit_stream: str = "CP_AUDIT"
    nats_replicas: int = 1  # replicas of the streams this service creates (1, 3 or 5)
    policy_ack_wait_s: float = 30.0  # a policy event must be handled (all pushes) in this
    policy_max_deliver: int = 5
    publish_apply_wait_s: float = 2.0  # POST /v1/policies waits this long for the local apply
    audit_max_age_days: float = 400.0  # CP_AUDIT retention
    audit_ship_interval_s: float = 0.2
    # signed audit checkpoints (docs/audit.md): key file (default <data-dir>/keys/, created)
    audit_signing_key_file: Path | None = None
    audit_checkpoint_entries: int = 1000  # a checkpoint every N durable entries ...
    audit_checkpoint_interval_s: float = 10.0  # ... or T seconds, whichever comes first
    rollout_sync_interval_s: float = 1.0  # how often a replica publishes its rollout counts
    # guarded rollouts: what a policy's omitted guard fields mean (docs/policies.md#guard)
    guard_enabled: bool = True
    # change records: publish / rollback / retire of a policy with `lock` needs a reason
    require_reason_for_locks: bool = False
    guard_max_failure_ratio: float = 0.01  # halt when failures exceed this share of targeted
    guard_min_sessions: int = 50  # ... and at least this many sessions are targeted
    guard_window_s: float = 300.0  # failures older than this are forgotten
    guard_on_breach: str = "halt"  # or "rollback"
    # experiments: the SRM check declares a mismatch only from this many exposures on
    srm_min_exposures: int = 100
    # signed policy events (controlplane.signing): inline keys (env only, never a flag, never
    # printed: SigningKeys hides them) or a key file re-read when it changes; not both
    policy_signing_key: SigningKeys | None = field(default=None, repr=False)
    policy_signing_key_file: Path | None = None
    # events stored before signing was turned on (stream sequence <= this) apply unsigned
    policy_unsigned_through_seq: int = 0
    # /readyz turns 503 when the policy consumer made no progress, or audit shipping kept
    # failing, for this long (docs/distributed.md, readiness)
    readiness_stall_s: float = 6.0
    # ... or when policy events stayed pending (the consumer not keeping up) for this long
    readiness_lag_s: float = 10.0

    def check(self) -> None:
        """Refuse combinations that cannot work (SettingsError names the fix)."""
        if self.redis_url and not self.nats_url:
            raise SettingsError(
                "--redis-url needs --nats-url: with a shared registry but an in-process policy "
                "bus, a policy published on one replica would never reach the others"
            )
        if not 0 < self.heartbeat_interval_s < self.session_ttl_s:
            raise SettingsError(
                f"heartbeat interval ({self.heartbeat_interval_s}s) must be positive and below "
                f"the session TTL ({self.session_ttl_s}s)"
            )
        if self.nats_creds is not None and self.nats_nkey is not None:
            raise SettingsError("use either --nats-creds or --nats-nkey, not both")
        if self.policy_max_deliver < 2:
            raise SettingsError("policy max deliver must be at least 2")
        if self.nats_replicas not in (1, 3, 5):
            raise SettingsError(f"NATS stream replicas must be 1, 3 or 5, not {self.nats_replicas}")
        for name in ("nats_policy_stream", "nats_audit_stream"):
            value = getattr(self, name)
            if not value or any(c in value for c in " .*>/\\"):
                raise SettingsError(f"{name} {value!r} is not a valid JetStream stream name")
        if self.policy_signing_key is not None and self.policy_signing_key_file is not None:
            raise SettingsError(
                "set either CONTROLPLANE_POLICY_SIGNING_KEY or --policy-signing-key-file, not both"
            )
        if self.policy_signing_key_file is not None:
            try:
                SigningKeys.read(self.policy_signing_key_file)
            except ValueError as exc:  # names the file and the entry, never a key
                raise SettingsError(str(exc)) from None
        if self.readiness_stall_s < 3.0:
            raise SettingsError(
                f"readiness stall ({self.readiness_stall_s}s) must be at least 3s: the policy "
                "consumer completes a fetch every 2s when idle"
            )
        if not 0.5 <= self.nats_ping_interval_s <= 600:
            raise SettingsError(
                f"NATS ping interval ({self.nats_ping_interval_s}s) must be within 0.5-600s"
            )
        if self.redis_pool_size < 2 or not self.redis_pool_timeout_s > 0:
            raise SettingsError(
                f"Redis pool size ({self.redis_pool_size}) must be at least 2 and its timeout "
                f"({self.redis_pool_timeout_s}s) positive"
            )
        if not self.readiness_lag_s > 0:
            raise SettingsError(f"readiness lag ({self.readiness_lag_s}s) must be positive")
        if not 0 <= self.guard_max_failure_ratio < 1 or self.guard_min_sessions < 1:
            raise SettingsError("guard max failure ratio must be in [0, 1), min sessions >= 1")
        if not 0 <= self.srm_min_exposures <= 1_000_000_000:
            raise SettingsError(
                f"srm_min_exposures ({self.srm_min_exposures}) must be in 0 … 1,000,000,000"
            )
        if not self.guard_window_s > 0 or self.guard_on_breach not in ("halt", "rollback"):
            raise SettingsError("guard window must be positive, on_breach halt or rollback")
        if self.agent_partial_updates not in ("reject_message", "apply_rest"):
            raise SettingsError(
                f"agent_partial_updates ({self.agent_partial_updates!r}) must be "
                "reject_message or apply_rest"
            )
        if self.audit_checkpoint_entries < 1 or not self.audit_checkpoint_interval_s > 0:
            raise SettingsError("audit checkpoint entries must be >= 1 and interval positive")
        if self.audit_signing_key_file is not None:  # readable and a key (never quoted)
            path = self.audit_signing_key_file
            try:
                load_private_key(path.read_bytes())
            except OSError as exc:
                raise SettingsError(f"audit signing key {path}: {exc.strerror or exc}") from None
            except ValueError as exc:
                raise SettingsError(f"audit signing key {path}: {exc}") from None
        self._check_files()
        if not 0 < self.first_message_timeout_s <= 60 or self.max_connections < 1:
            raise SettingsError("first message timeout must be in (0, 60]s, max connections >= 1")
        if self.client_update_burst < 1 or not self.client_update_rate_per_s > 0:
            raise SettingsError("client update burst must be >= 1 and the rate positive")
        prefix = self.nats_subject_prefix
        if not prefix or any(c in prefix for c in " *>") or prefix[0] == "." or prefix[-1] == ".":
            raise SettingsError(f"NATS subject prefix {prefix!r} is not a valid subject prefix")

    def _check_files(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("TLS needs both --tls-cert and --tls-key (PEM files)")
        if self.tls_cert is not None and self.tls_key is not None:
            try:
                tls_context(self.tls_cert, self.tls_key)
            except ValueError as exc:
                raise SettingsError(str(exc)) from None
        if self.credential_labels_file is not None:
            path = self.credential_labels_file
            try:
                parse_credential_labels(path.read_text(encoding="utf-8"), source=str(path))
            except OSError as exc:
                raise SettingsError(f"credential labels {path}: {exc.strerror or exc}") from None
            except ValueError as exc:  # names the line, never a key
                raise SettingsError(str(exc)) from None

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
                try:
                    if convert in (int, float) and not raw.isascii():
                        raise ValueError("int() and float() also read non-ASCII digits")
                    values[name] = convert(raw) if convert else raw
                except ValueError:
                    raise ValueError(
                        f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid "
                        f"{getattr(convert, '__name__', 'value')}"
                    ) from None

        for name, convert in _ENV_SETTINGS:
            pick(name, convert)
        raw_tokens = env.get(ENV_PREFIX + "TOKENS")
        if raw_tokens:
            values["tokens"] = parse_tokens(raw_tokens)
        raw_key = env.get(ENV_PREFIX + "POLICY_SIGNING_KEY")
        if raw_key:  # parsed here, not by pick(): its error would quote the value
            values["policy_signing_key"] = SigningKeys.parse(
                raw_key, source=ENV_PREFIX + "POLICY_SIGNING_KEY"
            )
        compression = env.get(ENV_PREFIX + "WEBSOCKET_COMPRESSION")
        if compression:
            values["websocket_compression"] = _flag(compression)
        guard = env.get(ENV_PREFIX + "GUARD_ENABLED")
        if guard:
            values["guard_enabled"] = _flag(guard)
        reasons = env.get(ENV_PREFIX + "REQUIRE_REASON_FOR_LOCKS")
        if reasons:
            values["require_reason_for_locks"] = _flag(reasons)
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
        settings = cls(**values)  # type: ignore[arg-type]
        parse_listen(settings.listen)
        return settings


# Settings read from CONTROLPLANE_<NAME> (besides TOKENS, WEBSOCKET_COMPRESSION,
# GUARD_ENABLED, REQUIRE_REASON_FOR_LOCKS and POLICY_SIGNING_KEY).
_ENV_SETTINGS: tuple[tuple[str, type | None], ...] = (
    ("listen", None),
    ("upstream_streaming_url", None),
    ("upstream_agent_url", None),
    ("nats_url", None),
    ("redis_url", None),
    ("node_id", None),
    ("data_dir", Path),
    ("tokens_file", Path),
    ("credential_labels_file", Path),
    ("tls_cert", Path),
    ("tls_key", Path),
    ("shutdown_grace_s", float),
    ("ack_timeout_s", float),
    ("agent_partial_updates", None),
    ("heartbeat_interval_s", float),
    ("session_ttl_s", float),
    ("redis_prefix", None),
    ("redis_pool_size", int),
    ("redis_pool_timeout_s", float),
    ("nats_creds", Path),
    ("nats_nkey", Path),
    ("nats_connect_timeout_s", float),
    ("nats_request_timeout_s", float),
    ("nats_ping_interval_s", float),
    ("nats_subject_prefix", None),
    ("nats_policy_stream", None),
    ("nats_audit_stream", None),
    ("nats_replicas", int),
    ("policy_ack_wait_s", float),
    ("policy_max_deliver", int),
    ("publish_apply_wait_s", float),
    ("audit_max_age_days", float),
    ("audit_ship_interval_s", float),
    ("audit_signing_key_file", Path),
    ("audit_checkpoint_entries", int),
    ("audit_checkpoint_interval_s", float),
    ("rollout_sync_interval_s", float),
    ("guard_max_failure_ratio", float),
    ("guard_min_sessions", int),
    ("guard_window_s", float),
    ("guard_on_breach", None),
    ("srm_min_exposures", int),
    ("policy_signing_key_file", Path),
    ("policy_unsigned_through_seq", int),
    ("readiness_stall_s", float),
    ("readiness_lag_s", float),
    ("first_message_timeout_s", float),
    ("max_connections", int),
    ("client_update_burst", int),
    ("client_update_rate_per_s", float),
)

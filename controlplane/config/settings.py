"""``Settings``: every setting of ``controlplane serve``, each declared once, grouped.

Flags win over ``CONTROLPLANE_*`` variables, which win over the defaults below (DESIGN.md §4).
Each field's flag is ``--<name with dashes>`` and its variable ``CONTROLPLANE_<NAME>`` unless
it says otherwise; docs/configuration.md is generated from these fields
(``python -m controlplane.config docs/configuration.md``) and a test keeps it in step.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from controlplane.config.schema import (
    ROLES,
    Group,
    Setting,
    SettingsError,
    declared,
    parse_listen,
    parse_tokens,
    problem,
    read_environment,
    setting,
)
from controlplane.labels import parse_credential_labels
from controlplane.roles import parse_grant
from controlplane.signing import SigningKeys
from controlplane.tls import tls_context
from sessions.checkpoints import load_private_key

__all__ = ["GROUPS", "SETTINGS", "Settings"]

SERVER = Group("Server", "The listener, this replica, its files and its shutdown.")
AUTH = Group("Authentication", "API tokens (role:token) and the gateway's credential labels.")
UPSTREAMS = Group("Upstreams and sockets", "Where the gateway connects, and its sockets.")
ADMISSION = Group("Admission", "Limits on sockets and client updates (docs/reliability.md).")
PUSH = Group("Push", "Pushing configuration to live sessions.")
REGISTRY = Group("Registry (Redis)", "The shared session registry of the distributed mode.")
NATS = Group("NATS", "Policy events and durable audit through JetStream (docs/distributed.md).")
POLICIES = Group("Policy intake", "The policy consumer, signed policy events, change records.")
AUDIT = Group("Audit", "Audit shipping and signed checkpoints (docs/audit.md).")
ROLLOUTS = Group("Rollouts and guard", "Rollout counts and what a policy's omitted guard means.")
READINESS = Group("Readiness", "When /readyz answers 503 (docs/distributed.md).")
GROUPS = (SERVER, AUTH, UPSTREAMS, ADMISSION, PUSH, REGISTRY, NATS, POLICIES, AUDIT, ROLLOUTS,
          READINESS)  # fmt: skip


def _tokens(raw: str, source: str) -> dict[str, str]:
    try:
        return parse_tokens(raw)
    except ValueError as exc:  # never quotes a token
        raise SettingsError(f"tokens ({source}): {exc}") from None


def _signing_keys(raw: str, source: str) -> SigningKeys:
    keys = SigningKeys.parse(raw, source=source)  # its error names the source, never a key
    _check_scopes(keys, source)
    return keys


def _check_scopes(keys: SigningKeys, source: str) -> None:
    """A scoped key (``<role>:<key>``) names a role, and the first key (the one replicas sign
    with) is unscoped: a replica's events may claim any role (controlplane.signing)."""
    for i, scope in enumerate(keys.scopes):
        if scope is not None and scope.partition("@")[0] not in ROLES:
            # (not quoted: with a colon in a key, the text before it is part of the key)
            raise ValueError(f"{source}: key {i + 1} is scoped to an unknown role (roles: "
                             f"{', '.join(ROLES)})")  # fmt: skip
        if scope is not None:
            try:
                parse_grant(scope)  # role@team+team: team names (docs/security.md#teams)
            except ValueError as exc:
                raise ValueError(f"{source}: key {i + 1}: {exc}") from None
    if keys.scopes[0] is not None:
        raise ValueError(f"{source}: key 1 is scoped to a role; the first key signs the "
                         "replicas' events: put scoped keys after an unscoped one")  # fmt: skip


def _stream_name(value: str) -> None:
    if not value or any(c in value for c in " .*>/\\"):
        raise ValueError(f"{value!r} is not a valid JetStream stream name")


def _websocket_url(value: str) -> None:
    scheme, sep, rest = value.partition("://")
    if scheme not in ("ws", "wss") or not sep or not rest or rest[0] in "/:?#":
        raise ValueError(f"{value!r} must be a ws:// or wss:// URL with a host, e.g. "
                         "wss://streaming.assemblyai.com/v3/ws")  # fmt: skip


def _subject_prefix(value: str) -> None:
    if not value or any(c in value for c in " *>") or value[0] == "." or value[-1] == ".":
        raise ValueError(f"NATS subject prefix {value!r} is not a valid subject prefix")


@dataclass(frozen=True)
class Settings:
    """Every setting of ``controlplane serve``; built once by the CLI, passed to app.build_app."""

    # --- server -------------------------------------------------------------------------------
    listen: str = setting(
        "127.0.0.1:8080", group=SERVER, help="host:port of every listener", valid=parse_listen
    )
    node_id: str = setting(
        group=SERVER,
        factory=socket.gethostname,
        shown="hostname",
        help="this replica's id: the owner of its sessions, its heartbeat key, its request "
        "subject; unique per live replica (the Helm chart uses the pod name)",
    )
    data_dir: Path = setting(
        Path("./data"),
        shown="./data",
        group=SERVER,
        help="audit JSONL files (DATA_DIR/audit), keys, the version log",
    )
    shutdown_grace_s: float = setting(
        30.0, group=SERVER, ge=0, help="seconds live sessions may finish after SIGTERM"
    )
    tls_cert: Path | None = setting(
        None, group=SERVER, help="PEM certificate (chain): serve https:// and wss://"
    )
    tls_key: Path | None = setting(None, group=SERVER, help="PEM private key of --tls-cert")
    websocket_compression: bool = setting(
        False,
        group=SERVER,
        help="negotiate permessage-deflate (off by default: 2x fan-out time, 3x memory)",
    )
    # --- authentication -----------------------------------------------------------------------
    tokens: Mapping[str, str] = setting(
        group=AUTH,
        factory=dict,
        parse=_tokens,
        secret=True,
        help="comma-separated role:token pairs (roles viewer, app, experimenter, compliance, "
        "admin; role@team:token names the token's team); environment only, never printed",
    )
    tokens_file: Path | None = setting(
        None,
        group=AUTH,
        help="file of role:token (or role@team:token) lines, re-read when it changes; with "
        "CONTROLPLANE_TOKENS too, both count",
    )
    credential_labels_file: Path | None = setting(
        None,
        group=AUTH,
        help="lines '<sha256 of an API key> k=v,k=v': labels for the gateway sessions of that key",
    )
    # --- upstreams and sockets ----------------------------------------------------------------
    upstream_streaming_url: str = setting(
        "wss://streaming.assemblyai.com/v3/ws",
        group=UPSTREAMS,
        valid=_websocket_url,
        help="Streaming v3 upstream (ws:// or wss://)",
    )
    upstream_agent_url: str = setting(
        "wss://agents.assemblyai.com/v1/ws",
        group=UPSTREAMS,
        valid=_websocket_url,
        help="Voice Agent upstream (ws:// or wss://)",
    )
    # PROTOCOLS.md leaves it open; it must match the upstream (the emulator's immutable_policy)
    agent_partial_updates: str = setting(
        "reject_message",
        group=UPSTREAMS,
        choices=("reject_message", "apply_rest"),
        help="what the Voice Agent upstream does with the rest of a session.update refused in "
        "part: reject_message (nothing applied) or apply_rest (the rest applied)",
    )
    max_client_message_bytes: int = setting(
        1024 * 1024, group=UPSTREAMS, ge=1, help="largest gateway client frame; larger close 1009"
    )
    upstream_connect_timeout_s: float = setting(
        10.0, group=UPSTREAMS, gt=0, le=120,
        help="how long a gateway session's upstream TCP/TLS connect may take; then the client "
        "is refused 502 (Streaming) or internal_error (Voice Agent)",
    )  # fmt: skip
    # --- admission (controlplane.edges.admission) ---------------------------------------------
    first_message_timeout_s: float = setting(
        10.0, group=ADMISSION, gt=0, le=60,
        help="a socket's first frame (register, session.update, audio) must come within this",
    )  # fmt: skip
    max_connections: int = setting(
        20_000, group=ADMISSION, ge=1, help="gateway + control sockets per replica; more get 503"
    )
    client_update_burst: int = setting(
        10, group=ADMISSION, ge=1, help="client configuration updates a session may send at once"
    )
    client_update_rate_per_s: float = setting(
        1.0, group=ADMISSION, gt=0, help="... and per second sustained"
    )
    expensive_read_burst: int = setting(
        600, group=ADMISSION, ge=1, help="expensive REST reads (session log, config-at, audit "
        "verify, assignment export) a token may make at once; more get 429",
    )  # fmt: skip
    expensive_read_rate_per_s: float = setting(
        20.0, group=ADMISSION, ge=0, help="... and per second sustained (0: no limit)"
    )
    # --- push ---------------------------------------------------------------------------------
    push_concurrency: int = setting(256, group=PUSH, ge=1, help="pushes written at once")
    ack_timeout_s: float = setting(
        5.0, group=PUSH, gt=0, help="Voice Agent acknowledgement (session.updated) timeout"
    )
    send_timeout_s: float = setting(
        5.0, group=PUSH, gt=0, help="a push write blocked this long fails (peer not reading)"
    )
    # fleet-level coalescing of policy fan-outs (controlplane.push.fanout, docs/policies.md#bursts)
    fanout_quiet_s: float = setting(
        0.2,
        group=PUSH,
        ge=0,
        le=60,
        help="debounce: a policy event within this many seconds of the previous one of that "
        "policy waits until the policy is quiet this long (an isolated event never waits; "
        "0 = off)",
    )
    fanout_max_delay_s: float = setting(
        1.0, group=PUSH, ge=0, le=600, help="debounce: the longest a policy event waits (seconds)"
    )
    fanout_frames_per_s: float = setting(
        0.0, group=PUSH, ge=0, le=1_000_000,
        help="policy push frames per second per replica (0 = unpaced)",
    )  # fmt: skip
    # --- registry (Redis) ---------------------------------------------------------------------
    redis_url: str | None = setting(
        None,
        group=REGISTRY,
        help="Redis URL (needs --nats-url); redis://[:password@]host:port/db, rediss:// for TLS",
    )
    redis_prefix: str = setting("cp:", group=REGISTRY, help="prefix of every Redis key")
    redis_pool_size: int = setting(
        50, group=REGISTRY, ge=2, help="connections per Redis client; busy ones are waited for"
    )
    redis_pool_timeout_s: float = setting(
        10.0, group=REGISTRY, gt=0,
        help="how long a command waits for a free Redis connection (then 503)",
    )  # fmt: skip
    heartbeat_interval_s: float = setting(
        5.0, group=REGISTRY, gt=0, help="replica heartbeat period; below the session TTL"
    )
    session_ttl_s: float = setting(
        30.0,
        group=REGISTRY,
        gt=0,
        help="a replica silent this long is lost: its sessions end (node_lost)",
        doc="also the TTL of its rollout counts",
    )
    # --- NATS (credentials are files, never inline secrets) -----------------------------------
    nats_url: str | None = setting(
        None,
        group=NATS,
        help="NATS URL(s), comma-separated: the distributed mode",
        doc="nats://user:pass@host:4222 and tls:// work as URLs",
    )
    nats_creds: Path | None = setting(
        None, group=NATS, help="NATS .creds file (JWT + nkey seed)", doc="needs the nkeys package"
    )
    nats_nkey: Path | None = setting(
        None, group=NATS, help="NATS nkey seed file", doc="needs the nkeys package"
    )
    nats_connect_timeout_s: float = setting(
        30.0, group=NATS, gt=0, help="start-up gives up when NATS is not reachable"
    )
    nats_request_timeout_s: float = setting(
        5.0, group=NATS, gt=0, help="JetStream API calls, publishes, owner requests"
    )
    # nats-py's default of 120 s left a paused server unnoticed for minutes
    nats_ping_interval_s: float = setting(
        2.0,
        group=NATS,
        ge=0.5,
        le=600,
        help="PING NATS this often; 2 unanswered tear the connection down and reconnect",
    )
    nats_subject_prefix: str = setting(
        "cp",
        group=NATS,
        valid=_subject_prefix,
        help="subjects <prefix>.policy.*, <prefix>.audit.*, <prefix>.node.*",
    )
    nats_policy_stream: str = setting(
        "CP_POLICY", group=NATS, valid=_stream_name, help="the policy stream"
    )
    nats_audit_stream: str = setting(
        "CP_AUDIT", group=NATS, valid=_stream_name, help="the audit stream"
    )
    nats_replicas: int = setting(
        1, group=NATS, choices=(1, 3, 5), help="replicas of the streams this service creates"
    )
    # --- policy intake ------------------------------------------------------------------------
    policy_ack_wait_s: float = setting(
        30.0, group=POLICIES, gt=0, help="a policy event must be handled (all pushes) in this"
    )
    policy_max_deliver: int = setting(
        5, group=POLICIES, ge=2, help="the policy consumer's max_deliver"
    )
    publish_apply_wait_s: float = setting(
        2.0, group=POLICIES, ge=0, help="POST /v1/policies waits this long for the local apply"
    )
    # inline keys (never a flag, never printed: SigningKeys hides them) or a key file; not both
    policy_signing_key: SigningKeys | None = setting(
        None,
        group=POLICIES,
        parse=_signing_keys,
        secret=True,
        help="HMAC keys policy events must be signed with, comma-separated (the first signs)",
    )
    policy_signing_key_file: Path | None = setting(
        None,
        group=POLICIES,
        help="HMAC keys from a file (comma- or newline-separated; the first signs), re-read "
        "when it changes; not together with CONTROLPLANE_POLICY_SIGNING_KEY",
    )
    policy_unsigned_through_seq: int = setting(
        0,
        group=POLICIES,
        ge=0,
        help="policy events up to this stream sequence predate signing and apply unsigned",
    )
    require_reason_for_locks: bool = setting(
        False,
        group=POLICIES,
        help="publish, rollback and retire of a policy with lock need a reason",
    )
    # --- audit --------------------------------------------------------------------------------
    audit_max_age_days: float = setting(400.0, group=AUDIT, gt=0, help="CP_AUDIT retention")
    audit_ship_interval_s: float = setting(0.2, group=AUDIT, gt=0, help="audit shipping period")
    audit_signing_key_file: Path | None = setting(
        None,
        group=AUDIT,
        flag="--audit-signing-key",
        shown="DATA_DIR/keys/ (created)",
        help="Ed25519 key (PEM or base64) signing audit checkpoints",
    )
    audit_checkpoint_entries: int = setting(
        1000, group=AUDIT, ge=1, help="a signed audit checkpoint every N entries"
    )
    audit_checkpoint_interval_s: float = setting(
        10.0, group=AUDIT, gt=0, help="... or every T seconds"
    )
    audit_checkpoint_min_gap_s: float = setting(
        5.0,
        group=AUDIT,
        ge=0,
        help="an entry-count checkpoint waits this long after the previous one (a burst is one)",
    )
    audit_spill_dir: Path | None = setting(
        None,
        group=AUDIT,
        help="a directory on another disk: entries the data dir's disk refuses at shutdown are "
        "kept there for `controlplane audit recover` (default: logged at ERROR)",
    )
    # --- rollouts and guard (docs/policies.md#guard) ------------------------------------------
    rollout_sync_interval_s: float = setting(
        1.0, group=ROLLOUTS, gt=0, help="how often a replica publishes its rollout counts"
    )
    guard_enabled: bool = setting(True, group=ROLLOUTS, help="versions are guarded by default")
    guard_max_failure_ratio: float = setting(
        0.01,
        group=ROLLOUTS,
        ge=0,
        lt=1,
        help="halt when failures exceed this share of the targeted sessions",
    )
    guard_min_sessions: int = setting(
        50, group=ROLLOUTS, ge=1, help="... and at least this many sessions are targeted"
    )
    guard_window_s: float = setting(
        300.0, group=ROLLOUTS, gt=0, help="failures older than this are forgotten"
    )
    guard_on_breach: str = setting(
        "halt", group=ROLLOUTS, choices=("halt", "rollback"), help="what a breach does"
    )
    srm_min_exposures: int = setting(
        100,
        group=ROLLOUTS,
        ge=0,
        le=1_000_000_000,
        help="the experiment SRM check declares a mismatch only from this many exposures",
    )
    # --- readiness ----------------------------------------------------------------------------
    readiness_stall_s: float = setting(
        6.0,
        group=READINESS,
        ge=3,
        help="503 when policy intake or audit shipping is stuck this long (the policy consumer "
        "completes a fetch every 2 s when idle)",
    )
    readiness_lag_s: float = setting(
        10.0, group=READINESS, gt=0, help="503 when policy events stay pending this long"
    )

    def check(self) -> None:
        """Refuse values and combinations that cannot work (SettingsError names the fix)."""
        for spec in SETTINGS:
            reason = problem(spec, getattr(self, spec.name))
            if reason is not None:
                raise SettingsError(reason)
        if self.redis_url and not self.nats_url:
            raise SettingsError(
                "--redis-url needs --nats-url: with a shared registry but an in-process policy "
                "bus, a policy published on one replica would never reach the others"
            )
        if not self.heartbeat_interval_s < self.session_ttl_s:
            raise SettingsError(
                f"heartbeat interval ({self.heartbeat_interval_s}s) must be below "
                f"the session TTL ({self.session_ttl_s}s)"
            )
        if self.nats_creds is not None and self.nats_nkey is not None:
            raise SettingsError("use either --nats-creds or --nats-nkey, not both")
        if self.policy_signing_key is not None and self.policy_signing_key_file is not None:
            raise SettingsError(
                "set either CONTROLPLANE_POLICY_SIGNING_KEY or --policy-signing-key-file, not both"
            )
        self._check_files()

    def _check_files(self) -> None:
        if self.tokens_file is not None:  # readable and well formed (never quoting a token)
            path = self.tokens_file
            try:
                parse_tokens(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise SettingsError(f"tokens file {path}: {exc.strerror or exc}") from None
            except ValueError as exc:  # UnicodeDecodeError too
                raise SettingsError(f"tokens file {path}: {exc}") from None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("TLS needs both --tls-cert and --tls-key (PEM files)")
        if self.tls_cert is not None and self.tls_key is not None:
            try:
                tls_context(self.tls_cert, self.tls_key)
            except ValueError as exc:
                raise SettingsError(str(exc)) from None
        if self.policy_signing_key_file is not None:
            try:
                path = self.policy_signing_key_file
                _check_scopes(SigningKeys.read(path), f"policy signing key file {path}")
            except ValueError as exc:  # names the file and the entry, never a key
                raise SettingsError(str(exc)) from None
        if self.audit_signing_key_file is not None:  # readable and a key (never quoted)
            path = self.audit_signing_key_file
            try:
                load_private_key(path.read_bytes())
            except OSError as exc:
                raise SettingsError(f"audit signing key {path}: {exc.strerror or exc}") from None
            except ValueError as exc:
                raise SettingsError(f"audit signing key {path}: {exc}") from None
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
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        flags: Mapping[str, object] | None = None,
        **overrides: object,
    ) -> Settings:
        """Defaults < environment < ``flags`` (from the command line) and explicit overrides
        (``None`` = unset). A bad value raises SettingsError naming the setting and the flag or
        variable it came from; combinations are ``check``'s."""
        values, origins = read_environment(SETTINGS, os.environ if env is None else env)
        for key, value in (flags or {}).items():
            if value is not None:
                values[key] = value
                origins[key] = _BY_NAME[key].flag or ""
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
                origins.pop(key, None)
        for name, value in values.items():
            spec = _BY_NAME.get(name)
            reason = None if spec is None else problem(spec, value, origins.get(name) or None)
            if reason is not None:
                raise SettingsError(reason)
        return cls(**values)  # type: ignore[arg-type]


SETTINGS: tuple[Setting, ...] = declared(Settings)
_BY_NAME = {spec.name: spec for spec in SETTINGS}

"""``EmulatorSettings``: one frozen object; every disputed protocol value is a setting.

Defaults come from the dialect tables (``sessions.dialects.*_table``), never restated here.
PROTOCOLS.md item 23 lists the disputed values; each has a field below. Settings are built from
defaults < ``EMULATOR_*`` environment variables < explicit overrides (CLI flags, tests).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from emulator.errors import InvalidSetting
from emulator.faults import FaultSpec
from sessions.dialects import streaming_v3_table as sv3
from sessions.dialects import voice_agent_v1_table as va1

__all__ = [
    "BEGIN",
    "END",
    "ENV_PREFIX",
    "FROM_STRINGS",
    "EmulatorSettings",
    "choices",
    "convert_setting",
    "knob",
    "parse_listen",
    "rewrite",
    "settings_table",
    "shown_default",
]

ENV_PREFIX = "EMULATOR_"

_DEFAULT_OUTPUT: Mapping[str, Any] = va1.DEFAULT_CONFIG["output"]  # type: ignore[assignment]


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) -> (host, port); ValueError names the input."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidSetting("listen", f"{value!r} must be host:port, e.g. 127.0.0.1:8090")
    return host.strip("[]") or "127.0.0.1", int(port)


def knob(
    default: Any = MISSING,
    *,
    help: str,
    factory: Callable[[], Any] | None = None,
    shown: str | None = None,
    table: bool = False,
) -> Any:
    """An ``EmulatorSettings`` field with its help (``--help`` and docs/emulator.md's table);
    ``table``: the default comes from the dialect tables (shown as ``table (value)``)."""
    meta = {"help": help, "shown": shown, "table": table}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class EmulatorSettings:
    """Every knob of the emulator, each with its help; docs/emulator.md's table is generated
    from these fields (``python -m emulator.settings docs/emulator.md``)."""

    # --- server -------------------------------------------------------------------------------
    listen: str = knob(
        "127.0.0.1:8090",
        help="host:port",
    )
    websocket_compression: bool = knob(
        False,
        help="negotiate permessage-deflate (off: [benchmarks.md](benchmarks.md))",
    )
    backlog: int = knob(
        2048,
        help="TCP listen backlog (CLI)",
    )
    send_timeout_s: float = knob(
        10.0,
        help="a frame that cannot be written for this long (peer not reading) aborts the socket",
    )
    tls_cert: str | None = knob(
        None,
        help="PEM certificate (chain): serve `https://` / `wss://` (`CONTROLPLANE_TLS_CERT` when"
        " no `EMULATOR_TLS_CERT`)",
    )
    tls_key: str | None = knob(
        None,
        help="its PEM private key (both or neither; `CONTROLPLANE_TLS_KEY` when no "
        "`EMULATOR_TLS_KEY`)",
    )
    # --- auth (both APIs) ---------------------------------------------------------------------
    api_keys: frozenset[str] | None = knob(
        None,
        shown="none (= any non-empty key)",
        help="accepted API keys (`--api-key`, repeatable)",
    )
    streaming_bearer: Literal["reject", "accept"] = knob(
        "reject",
        help="`Authorization: Bearer <key>` on `/v3/ws` and `/v3/token`: `reject` (1008) or "
        "`accept`",
    )
    agent_accept_raw_key: bool = knob(
        False,
        help="accept a raw key without `Bearer` on `/v1/ws` and `/v1/token`",
    )
    auth_rejection: Literal["close", "http"] = knob(
        "close",
        help="failed auth: `close` = upgrade then close 1008 (voice agent: `session.error "
        "unauthorized` first); `http` = HTTP 401 before the upgrade",
    )
    # --- streaming v3 -------------------------------------------------------------------------
    require_speech_model: bool = knob(
        False,
        help="`true`: connecting without `speech_model` is refused (early-2026 docs)",
    )
    default_speech_model: str = knob(
        sv3.DEFAULT_SPEECH_MODEL,
        shown="table `DEFAULT_SPEECH_MODEL`",
        help="model used when `speech_model` is omitted",
    )
    prompt_max_chars: int = knob(
        int(sv3.LIMITS["prompt_max_chars"]),
        table=True,
        help="cap for `prompt` (older docs: 1500)",
    )
    agent_context_max_chars: int = knob(
        int(sv3.LIMITS["agent_context_max_chars"]),
        table=True,
        help="cap for `agent_context` (older docs: 1500)",
    )
    carryover_depth: int = knob(
        int(sv3.LIMITS["previous_context_n_turns_default"]),
        table=True,
        help="default `previous_context_n_turns` (older docs: 3)",
    )
    config_rejection: Literal["close", "http"] = knob(
        "close",
        help="bad connect parameters: `close` = `Error` frame + close, `http` = HTTP 400 "
        '`{"error"}`',
    )
    connect_error_close_code: int = knob(
        sv3.CLOSE["invalid_message"],
        help="close code for connect-time rejections (model gating, caps, missing `sample_rate`,"
        " bad model)",
    )
    update_error_close_code: int = knob(
        sv3.CLOSE["invalid_message"],
        help="close code when an `UpdateConfiguration` is refused (oversize, bad type, >100 "
        "keyterms)",
    )
    strict_u3_params_at_connect: bool = knob(
        False,
        help="also refuse U3-only parameters other than `prompt`/`agent_context` on non-U3 "
        "models at connect (default: dropped silently, listed in `connect.ignored_params`)",
    )
    warning_code: int = knob(
        sv3.WARNING_CODE,
        help="`warning_code` of `Warning` messages (the real value is undocumented)",
    )
    error_frame_before_close: bool = knob(
        True,
        help='send `{"type":"Error","error_code","error"}` before every error close',
    )
    enforce_chunk_duration: bool = knob(
        True,
        help="enforce 50–1000 ms per binary message (3007)",
    )
    pacing_tolerance_ms: float = knob(
        1500.0,
        help="how far audio may run ahead of wall time inside the window before 3007 (`inf` "
        "disables)",
    )
    pacing_window_s: float = knob(
        10.0,
        help="sliding window of the rate check",
    )
    max_session_seconds: float = knob(
        float(sv3.LIMITS["max_session_seconds"]),
        table=True,
        help="streaming session lifetime → 3008 (a token's `max_session_duration_seconds` can "
        "shorten it)",
    )
    heartbeat_interval_s: float = knob(
        float(sv3.LIMITS["heartbeat_interval_s"]),
        table=True,
        help="`Heartbeat` period when `session_heartbeat=true`",
    )
    max_concurrent_sessions: int | None = knob(
        None,
        help="per API; streaming → close 3009, voice agent → `session.error "
        "concurrency_exceeded` + 1008",
    )
    # --- turns and transcripts (both APIs) ----------------------------------------------------
    transcript_seed: int = knob(
        0,
        help="seed of the deterministic transcripts",
    )
    word_ms: int = knob(
        400,
        help="user speech per transcribed word",
    )
    turn_complete_ratio: float = knob(
        0.0,
        help='share of turns (chosen by hashing seed + turn order) that count as "complete" at '
        "min silence (U3-Pro, voice agent); the rest end at max silence",
    )
    vad_floor_dbfs: float = knob(
        -60.0,
        help="speech probability 0 at or below this RMS level (linear up to `vad_ceiling_dbfs`)",
    )
    vad_ceiling_dbfs: float = knob(
        -20.0,
        help="speech probability 1 at or above this RMS level",
    )
    # --- voice agent --------------------------------------------------------------------------
    resume_mode: Literal["works", "always_not_found"] = knob(
        "works",
        help="`always_not_found` reproduces a reported upstream behaviour (resume never finds "
        "the session)",
    )
    resume_window_s: float = knob(
        float(va1.LIMITS["resume_window_s"]),
        table=True,
        help="how long a dropped voice-agent session stays resumable",
    )
    default_voice: str = knob(
        str(_DEFAULT_OUTPUT["voice"]),
        table=True,
        help="`output.voice` default (some sources say `anna`)",
    )
    voices: frozenset[str] = knob(
        va1.VOICES,
        shown="table `VOICES`",
        help="voice catalog (`REMOVED_VOICES` are always `invalid_value`)",
    )
    transcription_prompt_max_chars: int = knob(
        int(va1.LIMITS["transcription_prompt_max_chars"]),
        table=True,
        help="cap for `input.transcription_prompt`",
    )
    immutable_policy: Literal["reject_message", "apply_rest"] = knob(
        "reject_message",
        help="an update touching an immutable (or fault-failed) field: `reject_message` = one "
        "`session.error` per offending field and nothing applied; `apply_rest` = those "
        "errors, then the rest applied and `session.updated`",
    )
    agent_error_code_case: Literal["lower", "upper"] = knob(
        "lower",
        help="`upper` sends `UNAUTHORIZED` / `FORBIDDEN` / `INTERNAL_ERROR`",
    )
    tool_arguments_as_string: bool = knob(
        False,
        help="`tool.call.arguments` as a JSON string instead of an object",
    )
    agent_word_ms: int = knob(
        300,
        help="agent reply audio per word",
    )
    agent_session_seconds: float = knob(
        float(va1.LIMITS["max_session_seconds"]),
        table=True,
        help="voice-agent session lifetime → `session_expired`",
    )
    agents: Mapping[str, Mapping[str, Any]] = knob(
        factory=lambda: MappingProxyType({}),
        shown="`{}`",
        help='stored agents for `{"session": {"agent_id": ...}}` (id → session object)',
    )
    # --- inspection ---------------------------------------------------------------------------
    timeline_max_entries: int = knob(
        1000,
        help="per-session timeline kept (older entries counted in `timeline_dropped`)",
    )
    max_closed_sessions: int = knob(
        1000,
        help="closed sessions remembered (oldest forgotten first)",
    )
    turns_max_entries: int = knob(
        200,
        help="per-session turn log kept",
    )
    # --- faults applied to every new session --------------------------------------------------
    faults: FaultSpec = knob(
        factory=FaultSpec,
        shown="none",
        help="fault document applied to every new session (`--faults JSON`)",
    )

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidSetting("tls_cert", "TLS needs both --tls-cert and --tls-key")
        if self.default_speech_model not in sv3.ALL_MODELS:
            raise InvalidSetting(
                "default_speech_model", f"{self.default_speech_model!r} is not a known model"
            )
        if self.default_voice not in self.voices:
            raise InvalidSetting("default_voice", f"{self.default_voice!r} is not in voices")
        if not 0.0 <= self.turn_complete_ratio <= 1.0:
            raise InvalidSetting("turn_complete_ratio", "must be within 0..1")
        if self.vad_ceiling_dbfs <= self.vad_floor_dbfs:
            raise InvalidSetting("vad_ceiling_dbfs", "must exceed vad_floor_dbfs")
        for name in ("word_ms", "agent_word_ms", "timeline_max_entries", "heartbeat_interval_s"):
            if getattr(self, name) <= 0:
                raise InvalidSetting(name, "must be positive")
        if self.carryover_depth < 0:
            raise InvalidSetting("carryover_depth", "must be >= 0")
        for name in FROM_STRINGS:
            allowed = choices(name)
            if allowed and getattr(self, name) not in allowed:
                raise InvalidSetting(name, f"must be one of {', '.join(allowed)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> EmulatorSettings:
        """Defaults < ``EMULATOR_<NAME>`` variables < explicit overrides (``None`` = unset)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "" or f.name not in FROM_STRINGS:
                continue
            values[f.name] = convert_setting(f.name, raw)
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """JSON-able view (API keys are never shown, only their count)."""
        doc: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_keys":
                value = None if value is None else f"<{len(value)} keys>"
            elif isinstance(value, frozenset):
                value = sorted(value)
            elif isinstance(value, FaultSpec):
                value = value.to_dict()
            elif isinstance(value, Mapping):
                value = sorted(value)
            doc[f.name] = value
        return doc


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean")


def _optional_int(raw: str) -> int | None:
    return None if raw.strip().lower() in ("none", "unlimited") else int(raw)


def _keys(raw: str) -> frozenset[str] | None:
    if raw.strip().lower() in ("*", "any"):
        return None
    return frozenset(k.strip() for k in raw.split(",") if k.strip())


def _words(raw: str) -> frozenset[str]:
    return frozenset(k.strip() for k in raw.split(",") if k.strip())


def _kinds() -> dict[str, tuple[Callable[[str], Any], tuple[str, ...]]]:
    """(conversion from a string, allowed words) of every setting read from a string, derived
    from its type annotation: the one declaration is the field."""
    table: dict[Any, Callable[[str], Any]] = {
        bool: _bool, int: int, float: float, str: str, int | None: _optional_int,
        str | None: str, frozenset[str]: _words, frozenset[str] | None: _keys,
    }  # fmt: skip
    kinds: dict[str, tuple[Callable[[str], Any], tuple[str, ...]]] = {}
    for name, hint in typing.get_type_hints(EmulatorSettings).items():
        if typing.get_origin(hint) is Literal:
            kinds[name] = (str, typing.get_args(hint))
        elif hint in table:
            kinds[name] = (table[hint], ())
    return kinds


_KINDS = _kinds()
FROM_STRINGS: tuple[str, ...] = tuple(_KINDS)
"""Every setting a flag, an ``EMULATOR_*`` variable or ``--set`` can give (not agents, faults)."""


def choices(name: str) -> tuple[str, ...]:
    """The words a ``Literal`` setting allows (empty for the others)."""
    return _KINDS[name][1] if name in _KINDS else ()


def convert_setting(name: str, raw: str) -> Any:
    if name not in _KINDS:
        raise InvalidSetting(name, "is not a setting read from a string")
    convert = _KINDS[name][0]
    try:
        return convert(raw)
    except ValueError as exc:
        raise InvalidSetting(name, f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from exc


def shown_default(f: Field[Any]) -> str:
    """A field's default as the docs and ``--help`` show it."""
    if f.metadata.get("shown"):
        return str(f.metadata["shown"])
    value = f.default
    if isinstance(value, bool):
        text = f"`{str(value).lower()}`"
    elif value is None:
        return "none"
    else:
        text = f"`{value:g}`" if isinstance(value, float) else f"`{value}`"
    return f"table ({text.strip('`')})" if f.metadata.get("table") else text


def settings_table() -> str:
    """docs/emulator.md's settings table, one row per field."""
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    for f in fields(EmulatorSettings):
        meaning = str(f.metadata["help"]).replace("|", "\\|")
        lines.append(f"| `{f.name}` | {shown_default(f)} | {meaning} |")
    return "\n".join(lines) + "\n"


BEGIN = "<!-- emulator-settings:begin (generated: python -m emulator.settings FILE) -->"
END = "<!-- emulator-settings:end -->"


def rewrite(text: str) -> str:
    """``text`` with the section between the markers replaced by the generated table."""
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"no {BEGIN} ... {END} section")
    return f"{head}{BEGIN}\n\n{settings_table()}\n{END}{tail}"


if __name__ == "__main__":
    import sys
    from pathlib import Path

    for name in sys.argv[1:]:
        path = Path(name)
        path.write_text(rewrite(path.read_text(encoding="utf-8")), encoding="utf-8")

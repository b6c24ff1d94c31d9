"""What a Streaming v3 upstream runs, message by message; locks enforced on effect (sans-I/O).

``StreamingUpstream`` keeps the upstream's full configuration in the protocol's own names,
computed by the very code the emulator runs (``streaming_v3_config``): the connect query,
then every ``UpdateConfiguration`` (ours and the client's) in the order they went upstream.
A ``mode`` re-applies its whole preset, ``min_turn_silence`` is clamped, over-long keyterms
are dropped, U3-only fields are stripped on other models: all of it shows in the model.

``client_update`` decides what of a client's update may go upstream. Locks hold on the
*effect* of the message, not on its field names: a locked field named in the message is
stripped, and so is a field that would change a locked field implicitly (``mode``, whose
preset sets the turn parameters). It returns the frame to forward, the effective canonical
delta (every canonical field the message changes or sets, with the value the upstream then
runs) and a ``Warning`` for the client naming what was stripped and why.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from policies.fields import Config, Delta, Value
from sessions.dialects.base import ordered_fields
from sessions.dialects.streaming_v3_config import (
    TABLE_SETTINGS,
    Rejection,
    StreamingSettings,
    apply_update,
    parse_connect,
)
from sessions.dialects.streaming_v3_table import (
    CANONICAL_TO_WIRE,
    PARAM_ALIASES,
    WARNING_CODE,
)

__all__ = ["IMPLICIT_PARAMS", "ClientEffect", "StreamingUpstream", "canonical_view"]

ERROR_DUE: Final = "\x00error"  # (in ``warnings_due``: a client update the upstream refuses)
# Update parameters that change canonical fields they do not name (a preset).
IMPLICIT_PARAMS: Final = ("mode",)


def canonical_view(config: Mapping[str, Any]) -> Config:
    """The canonical fields of a full wire config (clearing values read as unset)."""
    view: Config = {}
    for name, (wire, _) in CANONICAL_TO_WIRE.items():
        raw = config.get(wire)
        if raw is None or raw in ("", []):
            continue
        view[name] = tuple(raw) if isinstance(raw, list) else raw
    return view


def _wire_names(name: str) -> tuple[str, ...]:
    wire = CANONICAL_TO_WIRE[name][0]
    return (wire, *(alias for alias, target in PARAM_ALIASES.items() if target == wire))


def _named(applied: Mapping[str, Any]) -> list[str]:
    """Canonical fields an applied update names (aliases already rewritten)."""
    return [name for name, (wire, _) in CANONICAL_TO_WIRE.items() if wire in applied]


@dataclass(frozen=True)
class ClientEffect:
    """What to do with one client ``UpdateConfiguration``.

    ``forward``: the frame for the upstream (``None``: nothing is left to send). ``delta``:
    the effective canonical delta of ``forward`` (``None`` values: the field is now unset).
    ``stripped``: wire parameter -> reason, for each parameter removed because of a lock;
    ``locked``: the locked canonical fields involved; ``refused``: what the client's message
    would have set them to (``None``: unset; empty when the message is malformed).
    ``warning``: the ``Warning`` frame for the client (``None`` when nothing was stripped).
    ``rejected``: the upstream will refuse ``forward`` (an ``Error`` and close): it changes
    nothing.
    """

    forward: dict[str, Any] | None
    delta: Delta = field(default_factory=dict)
    stripped: Mapping[str, str] = field(default_factory=dict)
    locked: tuple[str, ...] = ()
    warning: dict[str, Any] | None = None
    rejected: bool = False
    refused: Delta = field(default_factory=dict)


class StreamingUpstream:
    """The configuration one Streaming v3 upstream session runs (``config``, wire names).

    ``config`` is ``None`` when the connect query is one the upstream refuses (the session
    never starts); updates then change nothing here.
    """

    __slots__ = ("_config", "_pushed", "settings", "warnings_due")

    def __init__(
        self, query: Mapping[str, str], settings: StreamingSettings = TABLE_SETTINGS
    ) -> None:
        self.settings = settings
        parsed = parse_connect(query, settings)
        self._config: dict[str, Any] | None = None if isinstance(parsed, Rejection) else parsed[0]
        # our frames not yet merged in, folded into one (a fan-out pays a dict update per
        # session, not a merge): they carry canonical fields only, never a preset, so applying
        # them one by one equals applying their union once, when the config is next read
        self._pushed: dict[str, Any] = {}
        # the upstream's own Warnings the model predicts and has not seen yet, by the field
        # each names (a U3-only field in a client update on another model: stripped with a
        # Warning); ours never draw one
        self.warnings_due: list[str] = []

    @property
    def config(self) -> dict[str, Any] | None:
        if self._pushed and self._config is not None:
            result = apply_update(self._config, self._pushed, self.settings)
            if result.rejection is None:
                self._config = result.config
        self._pushed = {}
        return self._config

    def view(self) -> Config:
        """The canonical fields the upstream runs now."""
        config = self.config
        return {} if config is None else canonical_view(config)

    def pushed(self, message: Mapping[str, Any]) -> None:
        """One of our ``UpdateConfiguration`` frames went upstream (frames are values: never
        changed after they are sent)."""
        if self._config is not None:
            self._pushed.update(message)

    def client_update(self, message: Mapping[str, Any], locks: Mapping[str, str]) -> ClientEffect:
        """Decide a client's update. ``locks``: locked canonical field -> who locked it
        (shown to the client). Commits the forwarded frame's effect to ``config``."""
        config = self.config
        if config is None:
            return ClientEffect(dict(message))
        out = copy.deepcopy(dict(message))
        stripped: dict[str, str] = {}
        involved: list[str] = []
        for name in locks:
            if name not in CANONICAL_TO_WIRE:
                continue
            for wire in _wire_names(name):
                if wire in out:
                    del out[wire]
                    stripped[wire] = f"{name} locked by {locks[name]}"
                    if name not in involved:
                        involved.append(name)
        before = canonical_view(config)
        asked = apply_update(config, message, self.settings)
        asked_view = canonical_view(asked.config) if asked.rejection is None else None
        result = apply_update(config, out, self.settings)
        for param in IMPLICIT_PARAMS:
            if result.rejection is not None:
                break
            after = canonical_view(result.config)
            hit = [n for n in locks if after.get(n) != before.get(n)]
            if not hit or param not in out:
                continue
            del out[param]
            stripped[param] = f"{param} would change " + ", ".join(
                f"{n} locked by {locks[n]}" for n in hit
            )
            involved.extend(n for n in hit if n not in involved)
            result = apply_update(config, out, self.settings)
        if result.rejection is None:
            after = canonical_view(result.config)
            if any(after.get(n) != before.get(n) for n in locks):
                # nothing left to strip that explains it: refuse the whole message
                stripped.update((k, f"{k} would change a locked field") for k in out if k != "type")
                out = {"type": out.get("type")}
        warning = None
        if stripped:
            text = "; ".join(f"{k} ({why})" for k, why in stripped.items())
            warning = {
                "type": "Warning",
                "warning_code": WARNING_CODE,
                "warning": f"ignored by the control plane: {text}",
            }
        refused: Delta = {}
        if asked_view is not None:
            refused = {n: asked_view.get(n) for n in ordered_fields(involved)}
        locked = tuple(ordered_fields(involved))
        # nothing left once locked fields are stripped: nothing to send (an update that was
        # empty to begin with still goes: the upstream answers it, not us)
        forward: dict[str, Any] | None = out if set(out) - {"type"} or not stripped else None
        if forward is None:
            return ClientEffect(None, {}, stripped, locked, warning, refused=refused)
        if result.rejection is not None:  # (the upstream answers Error, then closes)
            self.warnings_due.append(ERROR_DUE)
            return ClientEffect(forward, {}, stripped, locked, warning, True, refused)
        after = canonical_view(result.config)
        names = set(_named(result.applied)) | {
            n for n in CANONICAL_TO_WIRE if after.get(n) != before.get(n)
        }
        delta: dict[str, Value | None] = {n: after.get(n) for n in ordered_fields(names)}
        self._config = result.config
        self.warnings_due.extend(result.stripped)
        return ClientEffect(forward, delta, stripped, locked, warning, refused=refused)

    def upstream_error(self) -> bool:
        """The upstream sent an ``Error`` about a message (then it closes): True when the model
        predicted it (a client update it refuses), False when not (an update of ours or the
        client's refused for a reason the model does not know: which one, nobody can tell)."""
        if ERROR_DUE in self.warnings_due:
            self.warnings_due.remove(ERROR_DUE)
            return True
        return False

    def upstream_warning(self, text: str) -> bool:
        """The upstream sent a ``Warning`` (``text``): True when the model predicted it (it
        names a field the model strips itself), False when it did not (the upstream did not
        apply an update as the model says: which one, the protocol cannot tell). A Warning
        that names no predicted field is never taken for a predicted one (differential
        distributed seed 4: a dropped update's Warning was taken for its strip warning)."""
        for i, name in enumerate(self.warnings_due):
            if re.search(rf"\b{re.escape(name)}\b", text):  # (prompt, not keyterms_prompt)
                del self.warnings_due[i]
                return True
        return False

"""The members of a version-log entry, encoded for the log: JSON-native copies with their
canonical JSON (``canonical``: encoded once, logged many times), credentials in a wire message
redacted (``redacted``), policy references as the entry's ``policies`` member."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from policies.provenance import PolicyRef
from sessions.versionchain import Canonical

__all__ = [
    "POLICY_MEMO",
    "REDACTED",
    "SECRET_WIRE_KEYS",
    "as_canonical",
    "canonical",
    "policy_member",
    "redacted",
]

_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """A JSON-native deep copy: tuples become lists, mappings dicts (hot path: kept lean)."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, list | tuple):
        return [v if type(v) in _SCALARS else _plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): v if type(v) in _SCALARS else _plain(v) for k, v in value.items()}
    for base in (str, int, float):  # subclasses (StrEnum, IntEnum): store the plain value
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"not JSON-able in a log entry: {type(value).__name__}")


def canonical(value: Mapping[str, Any] | Sequence[Any]) -> Canonical:
    """A JSON-native copy of ``value`` with its canonical JSON, to log many times."""
    return Canonical.of_plain(_plain(value))


def as_canonical(value: Mapping[str, Any] | Canonical) -> Canonical:
    return value if isinstance(value, Canonical) else canonical(value)


# credentials a client may put in its own upstream config, which the record keeps as REDACTED
# (docs/security.md "Secrets"): Streaming v3 ``webhook_auth_header_value`` and ``token``,
# Voice Agent ``session.webhook.secret`` and ``session.llm[].api_key``, at any depth
SECRET_WIRE_KEYS: Final = frozenset({"webhook_auth_header_value", "token", "secret", "api_key"})
REDACTED: Final = "***"


def redacted(value: Any) -> Any:
    """``value`` (a wire message) with every non-null value under ``SECRET_WIRE_KEYS``
    replaced by ``REDACTED``; the same object when it holds none (a copy otherwise)."""
    if isinstance(value, Mapping):
        out = {k: REDACTED if k in SECRET_WIRE_KEYS and v is not None else redacted(v)
               for k, v in value.items()}  # fmt: skip
        same = all(out[k] is v for k, v in value.items())
        return value if same else out
    if isinstance(value, list | tuple):
        items = [redacted(v) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


POLICY_MEMO: Final = 256


def policy_member(ref: PolicyRef | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(ref, PolicyRef):
        return ref.as_dict()
    out = {"id": str(ref["id"]), "version": int(ref["version"]), "variant": ref.get("variant")}
    if ref.get("digest") is not None:
        out["digest"] = str(ref["digest"])
    return out

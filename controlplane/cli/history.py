"""What ``controlplane policy history`` and ``policy diff`` show, from the change records of
``GET /v1/policies/{id}/versions`` (docs/cli.md#policy-history): pure functions, no I/O.

A diff compares two versions' documents field by field: nested objects by dotted path, lists
and scalars as whole values; ``version`` itself is left out (it always differs). A field one
side lacks shows as ``None`` (``-`` in the table).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from controlplane.cli.http import CliError
from controlplane.cli.output import short, table

__all__ = ["HISTORY_HEADERS", "diff_documents", "diff_text", "history_row", "pick_version"]

HISTORY_HEADERS: Final = ("VERSION", "ACTION", "AT", "ACTOR", "REASON", "DIGEST")
_DIGEST_CHARS: Final = 12
_ABSENT: Final = object()


def history_row(record: Mapping[str, Any]) -> tuple[Any, ...]:
    digest = record.get("digest")
    return (
        record.get("version"),
        record.get("action"),
        record.get("at"),
        record.get("actor"),
        record.get("reason"),
        digest[:_DIGEST_CHARS] if isinstance(digest, str) else None,
    )


def pick_version(records: Sequence[Mapping[str, Any]], policy_id: str, version: int) -> Any:
    """The change record of ``version``; CliError naming the versions there are."""
    for record in records:
        if record.get("version") == version:
            return record
    known = ", ".join(str(r.get("version")) for r in records) or "none"
    raise CliError(f"policy {policy_id} has no version {version} (versions: {known})")


def diff_documents(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"path", "from", "to"}]`` for every field whose value differs, in path order."""
    left, right = _flatten(a), _flatten(b)
    left.pop("version", None)
    right.pop("version", None)
    changes = []
    for path in sorted(left.keys() | right.keys()):
        before, after = left.get(path, _ABSENT), right.get(path, _ABSENT)
        if before != after:
            changes.append({"path": path, "from": _plain(before), "to": _plain(after)})
    return changes


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _plain(value: Any) -> Any:
    return None if value is _ABSENT else value


def diff_text(changes: Sequence[Mapping[str, Any]], a: int, b: int, width: int = 60) -> str:
    """A table of the changes; when a value is longer than ``width`` (a prompt: table cells
    cut both sides at the same place, often before the difference), every field in full as
    JSON (quotes and escapes show whitespace and newlines exactly), one line per version."""
    cells = [(c["path"], short(c["from"], width), short(c["to"], width)) for c in changes]
    if not any(x.endswith("…") or y.endswith("…") for _, x, y in cells):
        return table(("FIELD", f"VERSION {a}", f"VERSION {b}"), cells)
    lines = []
    for change in changes:
        lines.append(str(change["path"]))
        for version, value in ((a, change["from"]), (b, change["to"])):
            text = "-" if value is None else json.dumps(value, ensure_ascii=False)
            lines.append(f"  version {version}: {text}")
    return "\n".join(lines)

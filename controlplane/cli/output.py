"""How the client commands print: ``--json`` or a human text, left-aligned tables, shortened
cells, UTC instants, label sets and YAML documents; API errors on stderr."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

import yaml

from controlplane.cli.http import ApiError, CliError

__all__ = [
    "Column",
    "Progress",
    "Ticker",
    "labels_text",
    "listing",
    "out",
    "print_error",
    "short",
    "table",
    "utc_instant",
    "when",
    "yaml_text",
]


def print_error(exc: CliError) -> None:
    print(f"controlplane: {exc.message}", file=sys.stderr)
    if isinstance(exc, ApiError):
        for violation in exc.details.get("violations", []):
            if isinstance(violation, dict):
                where, text = violation.get("field", "?"), violation.get("message", "")
                print(f"  - {where}: {text}", file=sys.stderr)
        if exc.status == 401:
            print("  (pass --token or set CONTROLPLANE_TOKEN)", file=sys.stderr)


def out(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    if args.as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        text = human()
        if text:
            print(text)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; cells are shortened to 60 characters."""
    cells = [[short(c) for c in row] for row in rows]
    if not cells:
        return "(none)"
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )


def short(value: Any, width: int = 60) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def utc_instant(value: Any) -> str | None:
    """Unix seconds as RFC 3339 UTC with milliseconds (``2026-12-07T02:00:00.000Z``); None
    for anything else, or a number no date can hold."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        stamp = dt.datetime.fromtimestamp(value, dt.UTC)
    except (OverflowError, ValueError, OSError):
        return None
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def when(value: Any) -> str:
    """A table cell for an instant: ``utc_instant``, else the value shortened."""
    return utc_instant(value) or short(value)


def labels_text(labels: Any) -> str:
    if not isinstance(labels, dict) or not labels:
        return "-"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


Column = tuple[str, str | Callable[[dict[str, Any]], Any]]


def listing(args: argparse.Namespace, items: list[dict[str, Any]], cols: Sequence[Column]) -> None:
    def cell(item: dict[str, Any], get: str | Callable[[dict[str, Any]], Any]) -> Any:
        return item.get(get) if isinstance(get, str) else get(item)

    rows = [[cell(item, get) for _, get in cols] for item in items]
    out(args, items, lambda: table([header for header, _ in cols], rows))


def yaml_text(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip()


class Progress:
    """``progress(done, total)`` for work of one request per item (a session's log): a line
    on stderr every ``every`` seconds once it has run that long; short runs print nothing."""

    def __init__(
        self,
        what: str,
        *,
        every: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        stream: TextIO | None = None,
    ) -> None:
        self._what, self._every, self._clock, self._stream = what, every, clock, stream
        self._start = clock()
        self._next = self._start + every

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._every
        print(f"controlplane: {self._what}: {done} of {total} [{now - self._start:.1f}s]",
              file=self._stream or sys.stderr, flush=True)  # fmt: skip


class Ticker:
    """``with Ticker("audit verify: reading data/audit"):`` — while the block runs, a line on
    stderr every ``every`` seconds (``controlplane: <what>... [4.0s]``); a short block prints
    nothing. For one long step that cannot count its items (reading, hashing)."""

    def __init__(self, what: str, *, every: float = 2.0, stream: TextIO | None = None) -> None:
        self._what, self._every, self._stream = what, every, stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cli-ticker", daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self._every):
            print(f"controlplane: {self._what}... [{time.monotonic() - start:.1f}s]",
                  file=self._stream or sys.stderr, flush=True)  # fmt: skip

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

"""The files of the JSONL version-log backend (``sessions.versionlog.file``): their names,
reading them back in write order with a torn last line cut off (and saved as ``<file>.torn``),
appending a batch of lines with as few system calls as the kernel allows, and the checkpoint
files next to them (records written whole or not at all, the signer's public key as PEM).

Plain functions over a directory, run on the log's worker threads; the log keeps the state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sessions.checkpoints import CheckpointSigner, public_key_pem
from sessions.errors import BackendUnavailable

__all__ = [
    "CHECKPOINT_PREFIX",
    "FILE_PREFIX",
    "FILE_SUFFIX",
    "Scan",
    "append_checkpoint_lines",
    "checkpoint_files",
    "day_of_file",
    "log_files",
    "publish_public_key",
    "read_checkpoint_rows",
    "scan_files",
    "write_lines",
]

# the logger this backend has always used (it lived in sessions.versionlog.core)
log = logging.getLogger("sessions.versionlog.core")

FILE_PREFIX: Final = "versionlog-"
FILE_SUFFIX: Final = ".jsonl"
CHECKPOINT_PREFIX: Final = "checkpoints-"


@dataclass
class Scan:
    rows: list[dict[str, Any]]
    files_of: dict[str, set[str]]
    problems: list[str]
    last_day: str | None = None


def log_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))


def checkpoint_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"{CHECKPOINT_PREFIX}*{FILE_SUFFIX}"))


def day_of_file(path: Path, prefix: str) -> str:
    """The UTC day ``YYYY-MM-DD`` in the name of a log (``FILE_PREFIX``) or checkpoint file."""
    return path.name[len(prefix) : -len(FILE_SUFFIX)]


def _cut_torn(path: Path, data: bytes, *, repair: bool) -> tuple[bytes, int]:
    """``data`` up to its last newline and where it was cut; with ``repair``, the torn bytes
    are appended to ``<file>.torn`` (kept for forensics) and the file truncated there."""
    cut = data.rfind(b"\n") + 1
    if repair:
        with path.with_name(path.name + ".torn").open("ab") as torn:
            torn.write(data[cut:] + b"\n")
        os.truncate(path, cut)
    return data[:cut], cut


def scan_files(directory: Path, *, repair: bool = False, only: set[str] | None = None) -> Scan:
    """Read every log file (or those named in ``only``) in write order; tolerant of bad lines."""
    if repair:
        directory.mkdir(parents=True, exist_ok=True)
    scan = Scan([], {}, [])
    for path in log_files(directory):
        scan.last_day = day_of_file(path, FILE_PREFIX)
        if only is not None and path.name not in only:
            continue
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            size = len(data)
            data, cut = _cut_torn(path, data, repair=repair)
            problem = f"{path.name}: torn last line ({size - cut} bytes) at byte {cut}"
            if repair:
                problem += f", moved to {path.name}.torn"
            scan.problems.append(problem)
            log.warning("version log: %s", problem)
        for number, line in enumerate(data.splitlines(), start=1):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("session_id"), str):
                scan.problems.append(f"{path.name}:{number}: not a log entry")
                log.warning("version log: %s:%d: not a log entry", path.name, number)
                continue
            scan.rows.append(row)
            scan.files_of.setdefault(row["session_id"], set()).add(path.name)
    return scan


def read_checkpoint_rows(
    directory: Path, *, repair: bool = False, problems: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every checkpoint line in write order; a line that is not a JSON object is kept as
    ``{}`` so verification names it. A torn last line is cut off (``repair``, noted in
    ``problems``) or skipped."""
    rows: list[dict[str, Any]] = []
    for path in checkpoint_files(directory):
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            size = len(data)
            data, cut = _cut_torn(path, data, repair=repair)
            log.warning("checkpoints: %s: torn last line (%d bytes)", path.name, size - cut)
            if repair and problems is not None:
                problems.append(f"{path.name}: torn last line moved to .torn")
        for line in data.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            rows.append(row if isinstance(row, dict) else {})
    return rows


def append_checkpoint_lines(path: Path, lines: list[bytes], *, fsync: bool) -> None:
    """Append checkpoint records to ``path`` whole (a failed write is truncated away)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise BackendUnavailable(f"checkpoints: cannot open {path}: {exc}") from exc
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(b"".join(lines))
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fdatasync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise BackendUnavailable(f"checkpoints: write to {path} failed: {exc}") from exc
    finally:
        os.close(fd)


def publish_public_key(directory: Path, signer: CheckpointSigner) -> None:
    """``signing-key-<key id prefix>.pub`` (PEM) next to the files, once (atomic rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    pub = directory / f"signing-key-{signer.key_id[:16]}.pub"
    if not pub.exists():
        tmp = pub.with_name(pub.name + ".tmp")
        tmp.write_bytes(public_key_pem(signer.public_key))
        os.replace(tmp, pub)


_IOV_MAX = 1024  # Linux's limit on buffers per writev


def write_lines(fd: int, lines: list[bytes]) -> int:
    """Write every line, in order, with as few system calls as the kernel allows; returns
    the bytes written."""
    total = 0
    for start in range(0, len(lines), _IOV_MAX):
        chunk = lines[start : start + _IOV_MAX]
        written = os.writev(fd, chunk)
        size = sum(map(len, chunk))
        if written < size:  # a short write (signal, quota): the rest of this chunk by hand
            view = memoryview(b"".join(chunk))[written:]
            while view:
                view = view[os.write(fd, view) :]
        total += size
    return total

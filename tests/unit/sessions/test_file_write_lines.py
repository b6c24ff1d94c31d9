"""The file log's batch write: every line, in order, through ``writev`` (short writes too)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sessions.versionlog import jsonl as file_versionlog
from sessions.versionlog.jsonl import write_lines as _write_lines


def _lines(n: int) -> list[bytes]:
    return [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * (i % 7)) for i in range(n)]


def _written(path: Path, lines: list[bytes]) -> bytes:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        _write_lines(fd, lines)
    finally:
        os.close(fd)
    return path.read_bytes()


def test_more_lines_than_one_writev_takes_land_whole_and_in_order(tmp_path: Path) -> None:
    lines = _lines(2 * file_versionlog._IOV_MAX + 5)
    assert _written(tmp_path / "log", lines) == b"".join(lines)


def test_a_short_writev_is_completed_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel may write part of a batch (a signal, a quota): the rest still lands,
    nothing twice."""
    real_write = os.write
    calls = []

    def short_writev(fd: int, buffers: list[bytes]) -> int:
        data = b"".join(buffers)
        calls.append(len(buffers))
        return real_write(fd, data[: len(data) // 3])

    monkeypatch.setattr(os, "writev", short_writev)
    lines = _lines(file_versionlog._IOV_MAX + 10)
    assert _written(tmp_path / "log", lines) == b"".join(lines)
    assert calls == [file_versionlog._IOV_MAX, 10]

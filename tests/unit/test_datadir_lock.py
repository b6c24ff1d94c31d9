"""The data dir's lock follows a disk remounted under a running replica (controlplane/cli/
datadir.py): it is taken again where the data dir now is, never created in a bare mount point
(the disk detached, not mounted yet), and refused there while another process holds it. The
real remount is tests/integration/distributed/test_disk_read_only.py."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from controlplane.cli.datadir import LOCK_FILE, DataDirLock


def _held(path: Path) -> bool:
    fd = os.open(path / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_the_lock_follows_the_data_dir_and_is_never_created_in_a_bare_mount_point(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    lock = DataDirLock(data)
    try:
        assert lock.follow() and not lock.moved()
        data.rename(tmp_path / "detached")  # the failed disk, lazily unmounted
        data.mkdir()  # its bare mount point
        assert lock.moved() and not lock.follow()
        assert not (data / LOCK_FILE).exists()
        data.rmdir()
        repaired = tmp_path / "repaired"
        repaired.mkdir()
        (repaired / LOCK_FILE).write_text("1\n")  # the repaired disk, as it was
        repaired.rename(data)
        assert lock.follow() and not lock.moved()
        assert _held(data) and (data / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    finally:
        lock.close()


def test_a_lock_another_process_took_meanwhile_is_refused_not_stolen(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    lock = DataDirLock(data)
    try:
        (data / LOCK_FILE).unlink()  # (its file replaced: as after a remount)
        other = os.open(data / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (this process, another file)
        try:
            assert not lock.follow()
        finally:
            os.close(other)
        assert lock.follow()
    finally:
        lock.close()

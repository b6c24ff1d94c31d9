"""Real disk faults for a ``controlplane serve`` replica: its data directory on a small file
system of its own, in a mount namespace of its own (``unshare --mount``), which the test sees
through ``/proc/<pid>/root``.

- ``on_tmpfs``: a tmpfs of ``TMPFS_BYTES`` (``ENOSPC`` from the kernel once ``fill`` took the
  room, also under root);
- ``on_ext4``: an ext4 image on a loop device mounted ``errors=remount-ro``, so that
  ``ext4_error`` makes the kernel remount it read-only as it does after a real disk error:
  writes to files already open fail ``EIO``, new opens ``EROFS`` (``fs_error``).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Any

__all__ = [
    "TMPFS_BYTES",
    "ext4_image",
    "fill",
    "fs_error",
    "mount_source",
    "on_ext4",
    "on_tmpfs",
    "remount_repaired",
    "rows",
    "run",
    "view_of",
]

TMPFS_BYTES = 8 * 1024 * 1024


def on_tmpfs(data_dir: Path, size: int = TMPFS_BYTES) -> list[str]:
    """The command that runs ``serve`` with a fresh tmpfs of ``size`` bytes over its data
    dir, in a mount namespace of its own (``$0`` the mount point, ``$@`` the serve command)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
            str(data_dir)]  # fmt: skip


def view_of(pid: int, data_dir: Path) -> Path:
    """The replica's data dir as its own mount namespace has it."""
    return Path(f"/proc/{pid}/root") / str(data_dir).lstrip("/")


def rows(view: Path) -> list[dict[str, Any]]:
    """Every version-log entry on disk under ``view``, in file order."""
    found = []
    for path in sorted((view / "audit").glob("versionlog-*.jsonl")):
        found += [json.loads(line) for line in path.read_bytes().splitlines()]
    return found


def fill(view: Path, keep: int) -> Path:
    """A file taking all the free space of the file system under ``view`` but ``keep`` bytes
    (the replica writes meanwhile: a file system full before that is full all the same)."""
    st = os.statvfs(view)
    size = st.f_bavail * st.f_frsize - keep
    filler = view / "filler"
    block = b"\0" * (1 << 20)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while size > 0:
            size -= os.write(fd, block[: min(size, len(block))])
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


def run(*cmd: str) -> str:
    """A command's output; raises naming its stderr when it fails."""
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr}")
    return done.stdout


def ext4_image(path: Path, size_mib: int = 64) -> Path:
    """A fresh ext4 file system in the file ``path``."""
    with path.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    run("mkfs.ext4", "-q", "-F", str(path))
    return path


def on_ext4(data_dir: Path, image: Path) -> list[str]:
    """The command that runs ``serve`` with the ext4 ``image`` (a loop device) mounted
    ``errors=remount-ro`` over its data dir, in a mount namespace of its own."""
    data_dir.mkdir(parents=True, exist_ok=True)
    script = 'mount -o loop,errors=remount-ro "$1" "$0" && shift && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
            str(data_dir), str(image)]  # fmt: skip


def mount_source(pid: int, data_dir: Path) -> tuple[str, bool]:
    """The device mounted at ``data_dir`` in ``pid``'s mount namespace, and whether its file
    system is read-only now (its super block's options: ``ro``, or ext4's ``emergency_ro``
    after an error)."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields = before.split()
        if fields[4] == str(data_dir):
            _fstype, source, options = after.split()[:3]
            flags = options.split(",")
            return source, "ro" in flags or "emergency_ro" in flags
    raise AssertionError(f"nothing mounted at {data_dir} in process {pid}")


def fs_error(pid: int, data_dir: Path) -> None:
    """A real ext4 error on the replica's data dir (``/sys/fs/ext4/<dev>/trigger_fs_error``,
    the kernel's own test hook into ``ext4_error``): with ``errors=remount-ro`` the kernel
    aborts the journal and remounts the file system read-only, as after a failed disk write."""
    device, _ = mount_source(pid, data_dir)
    Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("1\n")


def remount_repaired(pid: int, data_dir: Path, image: Path) -> None:
    """The repair: the failed file system detached from the replica's data dir (lazily: the
    replica holds its data-dir lock open there, ``cli/serve.py``; the log closed its file
    after the failed write), the image checked (``e2fsck``) and mounted writable again at the
    same place, in the replica's mount namespace, the replica running on."""
    ns = ["nsenter", "-t", str(pid), "-m", "--"]
    run(*ns, "umount", "--lazy", str(data_dir))
    done = subprocess.run(["e2fsck", "-f", "-y", str(image)], check=False, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    if done.returncode not in (0, 1):  # 1: errors corrected
        raise AssertionError(f"e2fsck exit {done.returncode}: {done.stdout}{done.stderr}")
    # a loop device of its own: ``mount -o loop`` would reuse the one the failed (lazily
    # detached, still referenced) super block sits on, and get that read-only file system back
    device = run("losetup", "--find", "--show", str(image)).strip()
    try:
        run(*ns, "mount", "-o", "errors=remount-ro", device, str(data_dir))
    finally:
        run("losetup", "--detach", device)  # (autoclear: freed once unmounted)

"""The embedded mode's durable policy store: every accepted policy event, one file each.

Distributed mode keeps policy events in the ``CP_POLICY`` stream; without NATS the in-process
bus forgets them on exit, so ``serve`` writes each event it accepts here before anything acts
on it (no session is pushed, no answer given, until the file and its directory are synced)
and replays them at start. Layout under ``<data-dir>/policies/``::

    <policy id>/<version>.json          a policy.published / policy.retired event (to_json)
    <policy id>/<version>.halted.json   the policy.halted event of that version, if any
    <policy id>/<version>.wave-<seq>.json   its policy.wave steps (docs/policies.md#waves)

A file is written once: to a temporary name, fsync'd, hard-linked to its final name (which
fails if the name exists: a version is never written twice) and the directory fsync'd, so a
crash (``kill -9``, power loss) leaves either the whole event or nothing. Replay order is per
policy, by version, then its wave steps by seq, then its halt. A file that does not parse back
to the event its name promises stops the start (``policy_store_corrupt``, naming the file and why):
replaying around a lost version could hand its number to different content, and quarantining
the file would free its name for exactly that. Files are decoded by ``bus.decode_event`` (the
consumer's hardened decoder, bounded by ``MAX_FILE_BYTES``), so any damage, a 5,000-deep
nesting included, is that one clear error, never a traceback.

Writes are blocking file I/O: the service runs them in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from controlplane.errors import Conflict, ControlPlaneError, PayloadTooLarge, Unavailable
from controlplane.intake.bus import PolicyEvent, UndecodableEvent, decode_event
from controlplane.intake.store import Change, PolicyStore
from policies.model import parse_policy

__all__ = ["MAX_FILE_BYTES", "DurableIntake", "PolicyFiles", "PolicyFilesCorrupt"]

log = logging.getLogger(__name__)

_NAME: Final = re.compile(r"^([1-9][0-9]{0,15})(\.halted|\.wave-[1-9][0-9]{0,15})?\.json$")
_POLICY_ID: Final = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_TMP_PREFIX: Final = ".tmp-"
# one stored event: a policy document (a request body of at most 1 MiB) re-encoded as JSON
# plus the event's fields; JSON escaping at most multiplies a body by 6, so nothing this
# service writes comes near it. Bounds the read of a damaged file (and the write, to match).
MAX_FILE_BYTES: Final = 16 * 1024 * 1024


class PolicyFilesCorrupt(ControlPlaneError):
    """A stored policy file cannot be replayed; the message names the file."""

    status = 500
    default_code = "policy_store_corrupt"


class PolicyFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, event: PolicyEvent) -> Path:
        suffix = ".halted.json" if event.type == "policy.halted" else ".json"
        if event.type == "policy.wave":
            suffix = f".wave-{event.wave_seq}.json"
        return self.root / event.policy_id / f"{event.version}{suffix}"

    # -- write -----------------------------------------------------------------------------
    def write(self, event: PolicyEvent) -> None:
        """Store one accepted event durably; Unavailable (503) when the disk refuses."""
        try:
            self._write(event)
        except OSError as exc:
            raise Unavailable(
                f"cannot store policy {event.policy_id!r} version {event.version} under "
                f"{self.root}: {exc.strerror or exc}",
                code="policy_store_unavailable",
                details={"id": event.policy_id, "version": event.version},
            ) from exc

    def _write(self, event: PolicyEvent) -> None:
        target = self.path(event)
        folder = target.parent
        if not folder.is_dir():
            if not self.root.is_dir():
                self.root.mkdir(parents=True, exist_ok=True)
                _fsync_dir(self.root.parent)
            folder.mkdir(exist_ok=True)
            _fsync_dir(self.root)
        data = json.dumps(event.to_json(), ensure_ascii=False, sort_keys=True).encode()
        if len(data) > MAX_FILE_BYTES:  # never store what the replay would refuse
            raise PayloadTooLarge(
                f"policy {event.policy_id!r} version {event.version} is {len(data)} bytes "
                f"stored, over the policy store's {MAX_FILE_BYTES}",
                code="policy_too_large",
            )
        tmp = folder / f"{_TMP_PREFIX}{target.name}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, target)  # no-clobber: FileExistsError if this version was stored
        except FileExistsError:  # another process on this data directory took the number
            raise Conflict(
                f"policy {event.policy_id!r} version {event.version} is already stored "
                f"({target}): refusing to reuse a version number",
                code="policy_store_conflict",
                details={"id": event.policy_id, "version": event.version},
            ) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        _fsync_dir(folder)

    # -- replay ----------------------------------------------------------------------------
    def load(self) -> list[PolicyEvent]:
        """Every stored event in replay order; PolicyFilesCorrupt names a bad file."""
        if not self.root.is_dir():
            return []
        events: list[PolicyEvent] = []
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or not _POLICY_ID.match(folder.name):
                continue
            events.extend(self._load_policy(folder))
        return events

    def _load_policy(self, folder: Path) -> Iterator[PolicyEvent]:
        named: list[tuple[int, int, int, Path]] = []  # version, kind order, wave seq, path
        for path in folder.iterdir():
            if path.name.startswith(_TMP_PREFIX):  # a write a crash interrupted
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found = _NAME.match(path.name)
            if found is None:
                raise PolicyFilesCorrupt(f"unexpected file {path} in the policy store")
            tail = found.group(2) or ""
            order = 2 if tail == ".halted" else 1 if tail else 0  # version, its waves, halt
            seq = int(tail[len(".wave-") :]) if order == 1 else 0
            named.append((int(found.group(1)), order, seq, path))
        for version, order, seq, path in sorted(named):
            yield self._read(path, folder.name, version, order, seq)

    @staticmethod
    def _read(path: Path, policy_id: str, version: int, order: int, seq: int) -> PolicyEvent:
        try:  # the hardened decoder: any damage (deep nesting too) is UndecodableEvent
            with path.open("rb") as stored:  # a damaged file may be huge: read one byte over
                event = decode_event(stored.read(MAX_FILE_BYTES + 1), max_bytes=MAX_FILE_BYTES)
        except (OSError, UndecodableEvent) as exc:
            raise PolicyFilesCorrupt(f"policy store file {path} cannot be read: {exc}") from None
        if (
            event.policy_id != policy_id
            or event.version != version
            or (event.type == "policy.halted") != (order == 2)
            or (event.type == "policy.wave") != (order == 1)
            or event.wave_seq != seq
        ):
            raise PolicyFilesCorrupt(
                f"policy store file {path} holds {event.type} of {event.policy_id!r} "
                f"version {event.version}, not what its name says"
            )
        return event


class DurableIntake:
    """The service's way into the policy store: with policy files (embedded mode) an event
    is stored durably before the store applies it; without (NATS keeps them), it applies."""

    def __init__(self, store: PolicyStore, files: PolicyFiles | None) -> None:
        self.store = store
        self.files = files
        self._lock = asyncio.Lock()  # one write-then-apply at a time: versions stay in order

    async def replay(self) -> None:
        """Rebuild the store from the files (at start, before any session is live)."""
        if self.files is None:
            return
        events = await asyncio.to_thread(self.files.load)
        for event in events:
            if event.type == "policy.halted":
                self.store.halt(event)
            elif event.type == "policy.wave":
                self.store.wave(event)
            else:
                self.store.apply(event)
        if events:
            log.info("policy store: replayed %d stored events of %d policies", len(events),
                     len(self.store.records()))  # fmt: skip

    async def apply(self, event: PolicyEvent) -> Change | None:
        """A published/retired event: stored, then applied; None when the store would
        ignore it (a duplicate or older version). A failed write raises Unavailable and
        changes nothing."""
        if self.files is None:
            return self.store.apply(event)
        async with self._lock:
            parse_policy(event.policy)  # an invalid document raises before anything is stored
            if not self.store.accepts(event):  # a duplicate, older version or lower role
                return None
            await asyncio.to_thread(self.files.write, event)
            return self.store.apply(event)

    async def before_halt(self, event: PolicyEvent) -> None:
        """Store a ``policy.halted`` event the store will accept (it names the active,
        not yet halted version; its role is not below the owner's) before it is applied."""
        if self.files is None:
            return
        if self.store.halt_accepts(event):
            await asyncio.to_thread(self.files.write, event)

    async def before_wave(self, event: PolicyEvent) -> None:
        """Store a ``policy.wave`` event that is the active version's next step (``seq``)."""
        if self.files is None:
            return
        if self.store.wave_accepts(event):
            await asyncio.to_thread(self.files.write, event)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The audit checkpoint signing key: where it lives, how it is read or created.

``--audit-signing-key FILE`` (``CONTROLPLANE_AUDIT_SIGNING_KEY_FILE``) names a file holding an
Ed25519 private key, PEM (PKCS#8, unencrypted) or base64 of the raw 32 bytes (e.g. a mounted
Secret). Without it the key is ``<data-dir>/keys/audit-signing.key``, created on first start
(directory 0700, file 0600), so checkpoints made before and after a restart are signed by the
same key. It is deliberately *not* under ``<data-dir>/audit/``: that directory is what gets
copied to auditors, and the private key must never travel with the trail. The public key is
published there instead (``FileVersionLog``). Errors never quote key material.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.config import Settings, SettingsError
from sessions.checkpoints import CheckpointSigner, load_private_key
from sessions.versionlog.file import Checkpointing

__all__ = ["DEFAULT_KEY", "checkpointing", "load_or_create_key"]

DEFAULT_KEY: Final = Path("keys") / "audit-signing.key"


def load_or_create_key(path: Path, *, create: bool) -> CheckpointSigner:
    """Read the key at ``path``; when missing and ``create``, generate and store it (0600)."""
    try:
        return CheckpointSigner(load_private_key(path.read_bytes()))
    except FileNotFoundError:
        if not create:
            raise SettingsError(f"audit signing key {path} does not exist") from None
    except ValueError as exc:
        raise SettingsError(f"audit signing key {path}: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"audit signing key {path}: {exc.strerror or exc}") from None
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces a key another process created meanwhile
    except FileExistsError:
        tmp.unlink()
        return load_or_create_key(path, create=False)
    tmp.unlink()
    return CheckpointSigner(key)


def checkpointing(settings: Settings) -> Checkpointing:
    """The checkpoint writer's settings for this replica (key read or created now)."""
    if settings.audit_signing_key_file is not None:
        signer = load_or_create_key(settings.audit_signing_key_file, create=False)
    else:
        signer = load_or_create_key(settings.data_dir / DEFAULT_KEY, create=True)
    return Checkpointing(
        signer=signer,
        node=settings.node_id,
        every_entries=settings.audit_checkpoint_entries,
        interval_s=settings.audit_checkpoint_interval_s,
        min_gap_s=settings.audit_checkpoint_min_gap_s,
    )

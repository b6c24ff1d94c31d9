"""The checkpoint signing key: created once (0600, outside the trail), reused, refused clearly
when configured and unusable, never quoted."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane import cli
from controlplane.audit.keys import DEFAULT_KEY, checkpointing, load_or_create_key
from controlplane.config import Settings, SettingsError


def test_the_default_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, node_id="n1", audit_checkpoint_entries=7,
                        audit_checkpoint_interval_s=2.5)  # fmt: skip
    first = checkpointing(settings)
    path = tmp_path / DEFAULT_KEY
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not path.is_relative_to(tmp_path / "audit")  # never travels with the trail
    again = checkpointing(settings)
    assert again.signer.key_id == first.signer.key_id
    assert (again.node, again.every_entries, again.interval_s) == ("n1", 7, 2.5)
    assert not list(tmp_path.glob("keys/*.tmp"))


def test_a_configured_key_is_used_and_never_created(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())  # fmt: skip
    given = tmp_path / "secret" / "key"
    given.parent.mkdir()
    given.write_bytes(base64.b64encode(raw))
    settings = Settings(data_dir=tmp_path, audit_signing_key_file=given)
    settings.check()
    signer = checkpointing(settings).signer
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)  # fmt: skip
    assert base64.b64decode(signer.public_b64) == public
    assert not (tmp_path / DEFAULT_KEY).exists()
    with pytest.raises(SettingsError, match="does not exist"):
        load_or_create_key(tmp_path / "missing", create=False)


@pytest.mark.parametrize("content", [None, b"c2VjcmV0LWJ1dC1ub3QtYS1rZXk=\n"])
def test_serve_refuses_an_unusable_key_with_exit_2_without_quoting_it(
    tmp_path: Path, content: bytes | None, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name in ("CONTROLPLANE_NATS_URL", "CONTROLPLANE_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "audit.key"
    if content is not None:
        path.write_bytes(content)
    code = cli.main(["serve", "--data-dir", str(tmp_path), "--audit-signing-key", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"audit signing key {path}" in err
    if content is not None:
        assert "base64 must hold 32 raw bytes" in err
        assert content.decode().strip() not in err

"""Signed policy events (``controlplane.signing``): the MAC, rotation, key files, settings and
``controlplane policy sign``; the shell recipe of docs/distributed.md checked against openssl."""

from __future__ import annotations

import hashlib
import hmac
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from controlplane import cli
from controlplane.config import Settings, SettingsError
from controlplane.signing import SIGNATURE_HEADER, EventSigner, SigningKeys, signature

KEY = "k1-" + "a" * 40
OTHER = "k2-" + "b" * 40
BODY = b'{"type":"policy.published","policy":{"id":"vip","version":2,"set":{}}}\n'


def _signed(key: str, msg_id: str, body: bytes = BODY) -> dict[str, str]:
    return {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: signature(key.encode(), msg_id, body)}


def test_the_mac_is_hmac_sha256_over_msg_id_newline_body() -> None:
    mac = hmac.new(KEY.encode(), b"vip:2\n" + BODY, hashlib.sha256).hexdigest()
    assert signature(KEY.encode(), "vip:2", BODY) == f"v1={mac}"


def test_the_shell_recipe_in_the_docs_computes_the_same_signature(tmp_path: Path) -> None:
    # fails, never skips: the recipe in docs/distributed.md is what operators run
    assert shutil.which("openssl"), "openssl is needed to check the documented recipe: install it"
    (tmp_path / "event.json").write_bytes(BODY)
    docs = Path(__file__).parents[2] / "docs" / "distributed.md"
    line = next(ln for ln in docs.read_text().splitlines() if ln.startswith("SIG=v1=$("))
    recipe = line + '; printf %s "$SIG"'
    env = {"KEY": KEY, "MSG_ID": "vip:2", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        ["sh", "-c", recipe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout == signature(KEY.encode(), "vip:2", BODY)


@pytest.mark.parametrize(
    ("headers", "body", "verdict"),
    [
        (_signed(KEY, "vip:2"), BODY, None),
        ({"Nats-Msg-Id": "vip:2"}, BODY, "unsigned"),
        (None, BODY, "unsigned"),
        ({SIGNATURE_HEADER: "  "}, BODY, "unsigned"),
        (_signed("wrong-" + "c" * 30, "vip:2"), BODY, "bad_signature"),
        (
            _signed(KEY, "vip:2"),
            BODY.replace(b'"set":{}', b'"set":{"prompt":"x"}'),
            "bad_signature",
        ),
        ({**_signed(KEY, "vip:2"), "Nats-Msg-Id": "vip:3"}, BODY, "bad_signature"),  # replayed
        ({SIGNATURE_HEADER: _signed(KEY, "vip:2")[SIGNATURE_HEADER]}, BODY, "bad_signature"),
        ({**_signed(KEY, "vip:2"), SIGNATURE_HEADER: "v1=" + "0" * 64}, BODY, "bad_signature"),
        ({"Nats-Msg-Id": "vip:2", SIGNATURE_HEADER: "v1=" + "0" * 5000}, BODY, "bad_signature"),
        (_signed(OTHER, "vip:2"), BODY, None),  # the second key (rotation) verifies too
        (
            {
                "Nats-Msg-Id": "vip:2",
                SIGNATURE_HEADER: "v1=00, " + _signed(OTHER, "vip:2")[SIGNATURE_HEADER],
            },
            BODY,
            None,
        ),
    ],
)
def test_check_accepts_only_a_valid_signature_over_this_body_and_msg_id(
    headers: dict[str, str] | None, body: bytes, verdict: str | None
) -> None:
    signer = EventSigner(SigningKeys.parse(f"{KEY},{OTHER}"))
    assert signer.check(headers, body) == verdict


def test_without_a_key_nothing_is_signed_and_everything_is_accepted() -> None:
    signer = EventSigner()
    assert not signer.enabled
    assert signer.headers("vip:2", BODY) == {}
    assert signer.check(None, BODY) is None
    assert signer.check({SIGNATURE_HEADER: "v1=garbage"}, BODY) is None


def test_the_first_key_signs() -> None:
    signer = EventSigner(SigningKeys.parse(f"{KEY}\n{OTHER}\n"))
    assert signer.headers("vip:2", BODY) == {
        SIGNATURE_HEADER: signature(KEY.encode(), "vip:2", BODY)
    }


def test_keys_never_show_in_repr_or_errors() -> None:
    keys = SigningKeys.parse(f"{KEY}, {OTHER}")
    assert KEY not in repr(keys) and KEY not in str(keys)
    assert repr(keys) == "<2 policy signing keys>"
    settings = Settings(policy_signing_key=keys)
    assert KEY not in repr(settings)
    short = "tooshort-s3cret"
    with pytest.raises(ValueError, match="key 2 is shorter than 16 bytes") as refused:
        SigningKeys.parse(f"{KEY},{short}")
    assert short not in str(refused.value)
    with pytest.raises(ValueError, match="no key"):
        SigningKeys.parse(" , \n")


def test_settings_read_the_key_from_the_environment_without_echoing_a_bad_one(
    tmp_path: Path,
) -> None:
    s = Settings.from_env({"CONTROLPLANE_POLICY_SIGNING_KEY": f"{KEY},{OTHER}"})
    assert s.policy_signing_key == SigningKeys.parse(f"{KEY},{OTHER}")
    with pytest.raises(ValueError) as refused:
        Settings.from_env({"CONTROLPLANE_POLICY_SIGNING_KEY": "s3cret-short"})
    assert "s3cret" not in str(refused.value)
    assert "CONTROLPLANE_POLICY_SIGNING_KEY" in str(refused.value)

    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    s = Settings.from_env({"CONTROLPLANE_POLICY_SIGNING_KEY_FILE": str(key_file)})
    assert s.policy_signing_key_file == key_file
    s.check()
    both = Settings(policy_signing_key=SigningKeys.parse(KEY), policy_signing_key_file=key_file)
    with pytest.raises(SettingsError, match="not both"):
        both.check()
    key_file.write_text("s3cret-short\n")
    with pytest.raises(SettingsError, match="shorter than 16 bytes") as bad:
        Settings(policy_signing_key_file=key_file).check()
    assert "s3cret" not in str(bad.value)
    with pytest.raises(SettingsError, match="policy signing key file"):
        Settings(policy_signing_key_file=tmp_path / "missing").check()


def test_a_key_file_is_reread_when_it_changes_and_a_bad_new_file_keeps_the_old_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "keys"
    path.write_text(KEY)
    signer = EventSigner(path=path)
    assert signer.current() == (KEY.encode(),)
    tmp = tmp_path / "keys.new"  # replaced the way a Kubernetes Secret mount changes
    tmp.write_text(f"{OTHER},{KEY}")
    tmp.replace(path)
    assert signer.current() == (OTHER.encode(), KEY.encode())
    assert signer.check(_signed(KEY, "vip:2"), BODY) is None
    tmp.write_text("short-s3cret")
    tmp.replace(path)
    assert signer.current() == (OTHER.encode(), KEY.encode())
    path.unlink()
    assert signer.current() == (OTHER.encode(), KEY.encode())
    text = caplog.text
    assert "keeping the previous policy signing keys" in text
    for secret in (KEY, OTHER, "short-s3cret"):
        assert secret not in text


def test_policy_sign_prints_the_header_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    event = tmp_path / "event.json"
    event.write_bytes(BODY)
    monkeypatch.setenv("CONTROLPLANE_POLICY_SIGNING_KEY", f"{KEY},{OTHER}")
    assert cli.main(["policy", "sign", "--msg-id", "vip:2", "-f", str(event)]) == 0
    assert capsys.readouterr().out.strip() == signature(KEY.encode(), "vip:2", BODY)
    key_file = tmp_path / "key"
    key_file.write_text(OTHER)
    args = ["policy", "sign", "--msg-id", "vip:2", "-f", str(event), "--key-file", str(key_file)]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.strip() == signature(OTHER.encode(), "vip:2", BODY)
    monkeypatch.delenv("CONTROLPLANE_POLICY_SIGNING_KEY")
    assert cli.main(["policy", "sign", "--msg-id", "vip:2", "-f", str(event)]) == 2
    assert "no signing key" in capsys.readouterr().err

"""A mistyped token entry never puts a token in an error or a log line. The usual slip is the
order (``token:role`` for ``role:token``): the part before ``:`` is then the token, and an
"unknown role 'TOKEN'" message would print it — at start-up (``serve`` exits with it on
stderr) or in the WARNING of a tokens file re-read while serving."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.api.auth import TokenStore
from controlplane.config import Settings, SettingsError
from controlplane.roles import Role
from sessions.clock import FakeClock

TOKEN = "tok" + secrets.token_hex(12)
EXE = str(Path(sys.executable).parent / "controlplane")


@pytest.mark.parametrize(
    "entries",
    [f"{TOKEN}:admin", f"admin:ok-token,{TOKEN}:viewer", f"{TOKEN}", f" {TOKEN} : compliance"],
    ids=lambda v: v.replace(TOKEN, "TOKEN"),  # the same ids in every process (pytest-xdist)
)
def test_a_token_entry_in_the_wrong_order_is_refused_without_printing_the_token(
    entries: str,
) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"CONTROLPLANE_TOKENS": entries})
    message = str(refused.value)
    assert "role:token" in message or "unknown role" in message, message
    assert TOKEN not in message and TOKEN[:12] not in message


def test_serve_refuses_a_reversed_token_entry_and_stderr_never_shows_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    env |= {"CONTROLPLANE_TOKENS": f"{TOKEN}:admin", "CONTROLPLANE_DATA_DIR": str(tmp_path),
            "CONTROLPLANE_LISTEN": "127.0.0.1:0"}  # fmt: skip
    done = subprocess.run([EXE, "serve"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode != 0
    assert "token entry 1" in done.stderr, done.stderr
    assert TOKEN not in done.stdout + done.stderr


def test_a_tokens_file_turned_reversed_while_serving_keeps_the_tokens_and_logs_no_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text("admin:good-token-123456\n")
    clock = FakeClock()
    store = TokenStore(Settings(tokens_file=path), ttl_s=1.0, clock=clock)
    path.write_text(f"admin:good-token-123456\n{TOKEN}:viewer\n")
    os.utime(path, ns=(5, 5))
    clock.advance(2.0)
    with caplog.at_level(logging.DEBUG):
        assert store.authenticate("Bearer good-token-123456").role is Role.ADMIN
    assert "keeping the previous tokens" in caplog.text
    assert TOKEN not in caplog.text

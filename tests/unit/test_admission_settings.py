"""Issue 19 items 5 and 7: admission settings (flags and environment, ASCII digits only), the
token bucket, and the REST words reserved from policy ids."""

from __future__ import annotations

import argparse

import pytest

from controlplane.api.routes import ROUTES
from controlplane.cli import serve
from controlplane.config import Settings, SettingsError
from controlplane.edges.admission import UpdateRate
from policies.limits import RESERVED_IDS
from sessions.clock import FakeClock


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_admission_settings_from_flags_and_environment() -> None:
    defaults = Settings()
    assert (defaults.first_message_timeout_s, defaults.max_connections) == (10.0, 20_000)
    assert (defaults.client_update_burst, defaults.client_update_rate_per_s) == (10, 1.0)
    env = {"CONTROLPLANE_FIRST_MESSAGE_TIMEOUT_S": "2.5", "CONTROLPLANE_MAX_CONNECTIONS": "7"}
    settings = Settings.from_env(env, client_update_burst=3)
    assert (settings.first_message_timeout_s, settings.max_connections) == (2.5, 7)
    assert settings.client_update_burst == 3
    args = _serve_args("--max-connections", "9", "--client-update-rate-per-s", "0.5")
    settings = serve.settings_from_args(args)
    assert (settings.max_connections, settings.client_update_rate_per_s) == (9, 0.5)
    for bad in ({"first_message_timeout_s": 0}, {"first_message_timeout_s": 61},
                {"max_connections": 0}, {"client_update_burst": 0},
                {"client_update_rate_per_s": 0}):  # fmt: skip
        with pytest.raises(SettingsError):
            Settings(**bad).check()  # type: ignore[arg-type]


def test_numbers_in_settings_are_ascii_digits_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="CONTROLPLANE_MAX_CONNECTIONS='１０' is not a valid int"):
        Settings.from_env({"CONTROLPLANE_MAX_CONNECTIONS": "１０"})
    with pytest.raises(SystemExit):
        _serve_args("--max-connections", "１０")
    assert "is not a valid int" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must be host:port"):
        Settings.from_env({"CONTROLPLANE_LISTEN": "127.0.0.1:８０８０"})


def test_update_rate_is_a_token_bucket() -> None:
    clock = FakeClock()
    rate = UpdateRate(clock, burst=3, rate_per_s=2.0)
    assert [rate.allow() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)  # one token back
    assert [rate.allow(), rate.allow()] == [True, False]
    clock.advance(60)  # never more than the burst
    assert [rate.allow() for _ in range(4)] == [True, True, True, False]


def test_every_rest_word_under_policies_is_reserved() -> None:
    words = {
        spec.path.split("/")[3]
        for spec in ROUTES
        if spec.path.startswith("/v1/policies/") and not spec.path.split("/")[3].startswith("{")
    }
    assert words and words <= RESERVED_IDS

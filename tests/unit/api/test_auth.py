"""Tokens: constant-time matching, rotation through the tokens file, no leaks."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from controlplane.api.auth import (
    Principal,
    Role,
    TokenStore,
    actor_for,
    check_publish_allowed,
    generate_admin_token,
)
from controlplane.config import Settings
from controlplane.errors import Forbidden, Unauthorized
from sessions.clock import FakeClock
from tests.unit.api.fake_service import TOKENS, FakeControlPlane, serve_fake


def test_roles_are_ordered() -> None:
    assert Role.VIEWER < Role.APP < Role.EXPERIMENTER < Role.COMPLIANCE < Role.ADMIN
    assert Role.parse(" Admin ") is Role.ADMIN
    with pytest.raises(ValueError, match="unknown role 'root'"):
        Role.parse("root")


def test_actor_is_role_and_short_hash() -> None:
    token = "abc"
    assert actor_for(Role.VIEWER, token) == "viewer:" + hashlib.sha256(b"abc").hexdigest()[:6]


def test_generated_tokens_are_long_and_distinct() -> None:
    a, b = generate_admin_token(), generate_admin_token()
    assert a != b and len(a) >= 43


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_token"),
        ("", "missing_token"),
        ("Basic dXNlcjpwYXNz", "malformed_header"),
        ("Bearer", "malformed_header"),
        ("Bearer    ", "malformed_header"),
        ("Bearer nope", "invalid_token"),
        ("Bearer " + TOKENS["admin"] + "x", "invalid_token"),
        ("Bearer " + TOKENS["admin"][:-1], "invalid_token"),
        ("Bearer " + "a" * 10_000, "invalid_token"),
    ],
)
def test_rejected_headers(header: str | None, reason: str) -> None:
    store = TokenStore(Settings(tokens={t: r for r, t in TOKENS.items()}))
    with pytest.raises(Unauthorized) as info:
        store.authenticate(header)
    assert info.value.details["reason"] == reason
    for token in TOKENS.values():
        assert token not in info.value.message


def test_scheme_is_case_insensitive() -> None:
    store = TokenStore(Settings(tokens={TOKENS["viewer"]: "viewer"}))
    assert store.authenticate(f"bearer {TOKENS['viewer']}").role is Role.VIEWER


def test_tokens_file_rotates_without_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text("admin:first-token\n# comment\nviewer:view-token\n")
    clock = FakeClock()
    settings = Settings(tokens={"env-token": "compliance"}, tokens_file=path)
    store = TokenStore(settings, ttl_s=2.0, clock=clock)
    assert store.authenticate("Bearer first-token") == Principal(
        Role.ADMIN, actor_for(Role.ADMIN, "first-token")
    )
    assert store.authenticate("Bearer env-token").role is Role.COMPLIANCE

    path.write_text("admin:second-token\n")
    os.utime(path, ns=(1, 1))  # a different signature even on coarse-mtime filesystems
    assert store.authenticate("Bearer first-token").role is Role.ADMIN  # within the TTL
    clock.advance(2.5)
    with pytest.raises(Unauthorized):
        store.authenticate("Bearer first-token")
    assert store.authenticate("Bearer second-token").role is Role.ADMIN

    # a broken file keeps the last good tokens (and says so, without any token)
    path.write_text("admin:second-token\nroot:x\n")
    os.utime(path, ns=(2, 2))
    clock.advance(2.5)
    with caplog.at_level(logging.WARNING, logger="controlplane.api.auth"):
        assert store.authenticate("Bearer second-token").role is Role.ADMIN
    assert "keeping the previous tokens" in caplog.text
    assert "second-token" not in caplog.text

    # a removed file revokes its tokens; the environment's remain
    path.unlink()
    clock.advance(2.5)
    with pytest.raises(Unauthorized):
        store.authenticate("Bearer second-token")
    assert store.authenticate("Bearer env-token").role is Role.COMPLIANCE


def test_every_configured_token_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit, no dict lookup by the presented token: each digest is compared."""
    import controlplane.api.auth as auth

    compared: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    store = TokenStore(Settings(tokens={t: r for r, t in TOKENS.items()}))
    store.authenticate(f"Bearer {TOKENS['viewer']}")
    assert len(compared) == len(TOKENS)
    compared.clear()
    with pytest.raises(Unauthorized):
        store.authenticate("Bearer unknown")
    assert len(compared) == len(TOKENS)


def test_check_publish_allowed() -> None:
    experimenter = Principal(Role.EXPERIMENTER, "experimenter:000000")
    compliance = Principal(Role.COMPLIANCE, "compliance:000000")
    experiment = {"id": "x", "experiment": {"key": "k", "variants": []}}
    check_publish_allowed(experimenter, experiment)
    check_publish_allowed(experimenter, {**experiment, "lock": None})
    check_publish_allowed(compliance, {"id": "x", "lock": ["prompt"]})
    with pytest.raises(Forbidden, match="has a 'lock'"):
        check_publish_allowed(experimenter, {**experiment, "lock": ["prompt"]})


async def test_tokens_never_appear_in_responses_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeControlPlane()
    client = await serve_fake(fake)
    seen: list[str] = []
    try:
        with caplog.at_level(logging.DEBUG):
            for role, token in TOKENS.items():
                auth = {"Authorization": f"Bearer {token}"}
                for method, path, body in (
                    ("GET", "/v1/sessions", None),
                    ("POST", "/v1/policies", {"id": "eu-disclosure", "lock": ["prompt"]}),
                    ("POST", "/v1/policies", {"id": "BAD"}),
                    ("GET", "/v1/nowhere", None),
                    ("DELETE", "/v1/policies/eu-disclosure", None),
                ):
                    resp = await client.request(method, path, json=body, headers=auth)
                    seen.append(await resp.text())
                    seen.append(repr(dict(resp.headers)))
                fake.raise_next = RuntimeError("boom")
                resp = await client.get("/v1/policies", headers=auth)
                assert resp.status == 500
                seen.append(await resp.text())
                resp = await client.get(
                    "/v1/sessions", headers={"Authorization": f"Bearer {token}x"}
                )
                assert resp.status == 401
                seen.append(await resp.text())
                assert role
    finally:
        await client.close()
    everything = "\n".join(seen) + caplog.text + repr([r.__dict__ for r in caplog.records])
    assert "boom" in caplog.text  # the log did capture the server side
    for token in TOKENS.values():
        assert token not in everything
    for _, _, actor in [c for c in fake.calls if c[0] == "retire_policy"]:
        assert ":" in actor and not any(t in actor for t in TOKENS.values())

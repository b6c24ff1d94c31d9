"""Credentials: API keys, single-use temporary tokens and voice-agent resume tokens (sans-I/O).

Streaming v3 (``/v3/ws``): raw key in ``Authorization`` (``Bearer <key>`` is refused unless
``streaming_bearer="accept"``), or a temporary token in ``?token=`` or in ``Authorization``
(the Python SDK sends it there). Voice agent (``/v1/ws``): ``Authorization: Bearer <key | token
| resume token>`` or ``?token=``; a raw key without ``Bearer`` only with
``agent_accept_raw_key``. Tokens from ``/v3/token`` are valid only on ``/v3/ws`` and tokens from
``/v1/token`` only on ``/v1/ws``; each is redeemed by exactly one successful connect.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from emulator.settings import EmulatorSettings
from sessions.clock import Clock

__all__ = ["Credential", "IssuedToken", "TokenStore", "agent_credential", "streaming_credential"]

Api = Literal["streaming", "agent"]


@dataclass
class IssuedToken:
    token: str
    api: Api
    owner: str  # the API key that minted it (resume / ownership checks)
    expires: float  # monotonic deadline for redemption
    max_session_s: float | None
    used: bool = False


@dataclass(frozen=True)
class Credential:
    """Who connected: ``owner`` is the API key (or the key behind a token)."""

    method: Literal["api_key", "token", "resume_token"]
    owner: str
    session_cap_s: float | None = None
    resume_token: str | None = None


class TokenStore:
    """Temporary tokens (single use, bounded: expired tokens are pruned on every issue)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._tokens: dict[str, IssuedToken] = {}

    def issue(self, api: Api, owner: str, expires_in_s: float, max_session_s: float | None) -> str:
        now = self._clock.monotonic()
        for key in [k for k, t in self._tokens.items() if t.expires < now or t.used]:
            del self._tokens[key]
        token = "eyJ" + secrets.token_urlsafe(32)
        self._tokens[token] = IssuedToken(token, api, owner, now + expires_in_s, max_session_s)
        return token

    def peek(self, api: Api, token: str) -> IssuedToken | None:
        issued = self._tokens.get(token)
        if issued is None or issued.api != api or issued.used:
            return None
        if issued.expires < self._clock.monotonic():
            return None
        return issued

    def redeem(self, api: Api, token: str) -> IssuedToken | None:
        issued = self.peek(api, token)
        if issued is not None:
            issued.used = True
        return issued


def key_ok(key: str, settings: EmulatorSettings) -> bool:
    if not key:
        return False
    return settings.api_keys is None or key in settings.api_keys


def _bearer(value: str) -> tuple[bool, str]:
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() == "bearer" and rest:
        return True, rest.strip()
    return False, value.strip()


def streaming_credential(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    settings: EmulatorSettings,
    tokens: TokenStore,
) -> Credential | str:
    """A credential, or the documented failure reason for close 1008."""
    token = query.get("token")
    if token:
        issued = tokens.redeem("streaming", token)
        if issued is None:
            return "Unauthorized Connection: Invalid or expired temporary token"
        return Credential("token", issued.owner, issued.max_session_s)
    header = headers.get("Authorization", "")
    if not header.strip():
        return "Unauthorized Connection: Missing Authorization header"
    is_bearer, value = _bearer(header)
    if is_bearer and settings.streaming_bearer == "reject":
        return "Unauthorized Connection: Invalid API key"
    issued = tokens.redeem("streaming", value)
    if issued is not None:
        return Credential("token", issued.owner, issued.max_session_s)
    if not key_ok(value, settings):
        return "Unauthorized Connection: Invalid API key"
    return Credential("api_key", value)


def agent_credential(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    settings: EmulatorSettings,
    tokens: TokenStore,
    resume_tokens: Mapping[str, str],
) -> Credential | str:
    """A credential, or a failure message for ``session.error{code:"unauthorized"}``."""
    token = query.get("token")
    if token:
        issued = tokens.redeem("agent", token)
        if issued is None:
            return "Authentication failed: invalid or expired token"
        return Credential("token", issued.owner, issued.max_session_s)
    header = headers.get("Authorization", "")
    if not header.strip():
        return "Authentication failed: missing Authorization header"
    is_bearer, value = _bearer(header)
    if not is_bearer and not settings.agent_accept_raw_key:
        return "Authentication failed: expected 'Authorization: Bearer <key>'"
    if value in resume_tokens:
        return Credential("resume_token", resume_tokens[value], resume_token=value)
    issued = tokens.redeem("agent", value)
    if issued is not None:
        return Credential("token", issued.owner, issued.max_session_s)
    if not key_ok(value, settings):
        return "Authentication failed: invalid API key"
    return Credential("api_key", value)

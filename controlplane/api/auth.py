"""Bearer-token authentication and role checks for the REST API.

Tokens come from ``Settings.all_tokens()`` ({token: role}: ``CONTROLPLANE_TOKENS`` plus the
tokens file). A :class:`TokenStore` keeps only SHA-256 digests of them and re-reads the file
when its ``stat`` signature changes (checked at most every ``ttl_s`` seconds), so a mounted
Kubernetes secret can rotate without a restart. A presented token is hashed and compared with
``hmac.compare_digest`` against *every* configured digest, never looked up by value.

Routes declare their minimum role in the route table (``controlplane.api.routes.ROUTES``);
:func:`require` wraps a handler with the check. The audit actor is ``"<role>:<sha256[:6]>"``:
the token itself never leaves this module, in a response or in a log line.

A token's entry may name its team (``role@team:TOKEN``, and teams it is granted:
``role@team+other:TOKEN``); a token without one acts for team ``default``
(``controlplane.roles.Team``, docs/security.md#teams). Policies are owned by team at their
owner role (``controlplane.intake.authority.check_owner``). On the control channel an app is
identified by its configured team, else by its token (``Principal.app``: ``token:<sha256[:8]>``),
which a session id it registered keeps.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from controlplane.config import Settings
from controlplane.errors import Forbidden, Unauthorized
from controlplane.roles import DEFAULT_TEAM, Role, Team, parse_grant, publish_refusal
from sessions.clock import Clock, SystemClock

__all__ = [
    "PRINCIPAL",
    "TOKENS",
    "Principal",
    "Role",
    "TokenStore",
    "actor_for",
    "app_identity",
    "authenticate_for",
    "check_publish_allowed",
    "generate_admin_token",
    "install_tokens",
    "require",
    "shown_actor",
    "shown_app",
    "shown_rollout",
    "shown_session",
]

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS: Final = 4096


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made the request: a role, the audit actor string (never the token) and the team
    it acts for; ``digest`` (the token's SHA-256) lets a long-lived connection ask whether it
    was revoked since; ``app``: its identity as a control-channel app (its configured team,
    else ``token:<sha256[:8]>``)."""

    role: Role
    actor: str
    digest: bytes = field(default=b"", repr=False, compare=False)
    team: Team = field(default_factory=lambda: Team(DEFAULT_TEAM), compare=False)
    app: str = field(default="", compare=False)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def actor_for(role: Role, token: str) -> str:
    """``"<role>:<first 6 hex chars of sha256(token)>"`` — stable, and safe to log."""
    return f"{role.label}:{_digest(token).hex()[:6]}"


def app_identity(digest: bytes, teams: tuple[str, ...]) -> str:
    """A control-channel app's identity: its configured team, else ``token:<first 8 hex
    chars of its SHA-256>`` (a configured team name cannot contain ':')."""
    return teams[0] if teams else f"token:{digest.hex()[:8]}"


TOKEN_APP: Final = "token"  # what a role below compliance sees of a team-less token's identity


def shown_app(identity: str | None, role: Role) -> str | None:
    """``registered_by`` as ``role`` may see it: a team name as is; a team-less token's
    identity (``token:<sha256[:8]>``, derived from the secret) only to compliance and admin,
    who tell apps apart in an audit; ``token`` to every other role (docs/security.md#teams)."""
    if identity is None or role >= Role.COMPLIANCE or not identity.startswith("token:"):
        return identity
    return TOKEN_APP


def shown_session(session: dict[str, Any], role: Role) -> dict[str, Any]:
    """A session object as ``role`` may see it (:func:`shown_app`: ``registered_by``)."""
    app = session.get("registered_by")
    shown = shown_app(app, role) if isinstance(app, str) else app
    return session if shown == app else {**session, "registered_by": shown}


_ACTOR: Final = re.compile(r"(viewer|app|experimenter|compliance|admin):[0-9a-f]{6}")


def shown_actor(record: dict[str, Any], role: Role) -> dict[str, Any]:
    """``record`` (a policy version, a halt, a wave step) as ``role`` may see its ``actor``:
    ``<role>:<sha256[:6]>`` is derived from the publisher's token, so below compliance only
    its role is shown (``experimenter``); other actors (``guard:<node>``) as they are."""
    actor = record.get("actor")
    if role >= Role.COMPLIANCE or not isinstance(actor, str) or not _ACTOR.fullmatch(actor):
        return record
    return {**record, "actor": actor.partition(":")[0]}


def shown_rollout(body: dict[str, Any], role: Role) -> dict[str, Any]:
    """A rollout status as ``role`` may see it: its halt's and wave steps' actors
    (:func:`shown_actor`)."""
    if role >= Role.COMPLIANCE:
        return body
    out = dict(body)
    if isinstance(out.get("halt"), dict):
        out["halt"] = shown_actor(out["halt"], role)
    waves = out.get("waves")
    if isinstance(waves, dict) and isinstance(waves.get("steps"), list):
        steps = [shown_actor(s, role) if isinstance(s, dict) else s for s in waves["steps"]]
        out["waves"] = {**waves, "steps": steps}
    return out


def _team(teams: tuple[str, ...]) -> Team:
    if not teams:
        return Team(DEFAULT_TEAM)
    return Team(teams[0], frozenset(teams[1:]))


def generate_admin_token() -> str:
    """A fresh random token (256 bits, URL-safe) for ``CONTROLPLANE_TOKENS=admin:<token>``."""
    return secrets.token_urlsafe(32)


_FileSignature = tuple[int, int, int] | None


class TokenStore:
    """Configured tokens as (digest, role) pairs, refreshed when the tokens file changes."""

    def __init__(self, settings: Settings, *, ttl_s: float = 2.0, clock: Clock | None = None):
        self._settings = settings
        self._ttl_s = ttl_s
        self._clock = clock or SystemClock()
        self._entries: tuple[tuple[bytes, Role, Team, str], ...] = ()
        self._signature: _FileSignature = None
        self._checked_at: float | None = None
        self._refresh(force=True)

    def _file_signature(self) -> _FileSignature:
        path = self._settings.tokens_file
        if path is None:
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self, *, force: bool = False) -> None:
        now = self._clock.monotonic()
        if not force and self._checked_at is not None and now - self._checked_at < self._ttl_s:
            return
        self._checked_at = now
        signature = self._file_signature()
        if not force and signature == self._signature:
            return
        try:
            tokens = self._load(signature)
        except (OSError, ValueError) as exc:
            # a half-written file: keep the last good set, try again after the TTL
            path = self._settings.tokens_file
            log.warning("tokens file %s unreadable, keeping the previous tokens: %s", path, exc)
            return
        self._signature = signature
        entries = []
        for token, grant in tokens.items():
            digest = _digest(token)
            role, teams = parse_grant(grant)
            entries.append((digest, role, _team(teams), app_identity(digest, teams)))
        self._entries = tuple(entries)

    def _load(self, signature: _FileSignature) -> Mapping[str, str]:
        if signature is None:  # no file configured, or removed: only the environment's tokens
            if self._settings.tokens_file is not None:
                log.warning("tokens file %s is missing", self._settings.tokens_file)
            return dict(self._settings.tokens)
        return self._settings.all_tokens()

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an ``Authorization`` header value; raises Unauthorized."""
        if not authorization:
            raise Unauthorized(
                "missing bearer token: send 'Authorization: Bearer <token>'",
                details={"reason": "missing_token"},
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                "the Authorization header must be 'Bearer <token>'",
                details={"reason": "malformed_header"},
            )
        self._refresh()
        presented = _digest(token[:MAX_TOKEN_CHARS])
        found: tuple[Role, Team, str] | None = None
        for digest, role, team, app in self._entries:  # no early exit: every entry compared
            if hmac.compare_digest(presented, digest):
                found = (role, team, app)
        if found is None or len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("unknown or revoked token", details={"reason": "invalid_token"})
        role, team, app = found
        return Principal(role, actor_for(role, token), presented, team, app)

    def role_now(self, digest: bytes) -> Role | None:
        """The role the token with this digest (``Principal.digest``) has now (the tokens
        file re-read as ``authenticate`` does); None once it is revoked. Long-lived
        connections (the control channel, the rollout stream) ask this, so a revocation
        also ends them."""
        self._refresh()
        found: Role | None = None
        for known, role, _, _ in self._entries:  # no early exit, as authenticate
            if hmac.compare_digest(digest, known):
                found = role
        return found


TOKENS: Final = web.AppKey("controlplane.api.tokens", TokenStore)
PRINCIPAL: Final = web.RequestKey("controlplane.api.principal", Principal)


def install_tokens(app: web.Application, settings: Settings) -> TokenStore:
    """Put a TokenStore on the app (once); handlers wrapped by :func:`require` use it."""
    if TOKENS not in app:
        app[TOKENS] = TokenStore(settings)
    return app[TOKENS]


def authenticate_for(request: web.Request, authorization: str | None, role: Role) -> Principal:
    """The request's principal; an Unauthorized (401) also names the role the route needs."""
    try:
        return request.config_dict[TOKENS].authenticate(authorization)
    except Unauthorized as exc:
        raise Unauthorized(
            f"{exc.message} ({request.method} {request.path} requires a token of role "
            f"{role.label} or higher)",
            details={**exc.details, "required_role": role.label},
        ) from None


def require(role: Role, handler: Handler) -> Handler:
    """Wrap ``handler``: authenticate the bearer token and demand at least ``role``.

    The principal is stored on the request under :data:`PRINCIPAL`.
    """

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        principal = authenticate_for(request, request.headers.get("Authorization"), role)
        if principal.role < role:
            raise Forbidden(
                f"{request.method} {request.path} requires role {role.label} or higher; "
                f"this token has role {principal.role.label}",
                details={"required_role": role.label, "role": principal.role.label},
            )
        request[PRINCIPAL] = principal
        return await handler(request)

    return guarded


def check_publish_allowed(principal: Principal, doc: Mapping[str, Any]) -> None:
    """Experimenters may publish only experiment policies without a lock (else Forbidden)."""
    reason = publish_refusal(principal.role, doc)
    if reason is not None:
        raise Forbidden(
            "experimenters may publish only experiment policies without a lock: "
            f"{reason}; publishing it requires role compliance",
            details={"required_role": Role.COMPLIANCE.label, "role": principal.role.label},
        )

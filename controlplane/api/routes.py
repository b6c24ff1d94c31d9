"""REST routes (DESIGN.md §4): one table, ``ROUTES``, declares path, method and minimum role.

:func:`add_routes` mounts them on an app together with the error middleware and the token
store. Handlers parse and validate every input first (``controlplane.api.inputs``), then call
the service through the :class:`~controlplane.api.ports.ControlPlaneAPI` protocol only.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from controlplane.api.auth import (
    PRINCIPAL,
    Role,
    check_publish_allowed,
    install_tokens,
    require,
    shown_actor,
    shown_rollout,
    shown_session,
)
from controlplane.api.documents import DocumentReader
from controlplane.api.errors import error_middleware, install_log_redaction
from controlplane.api.events import rollout_stream
from controlplane.api.inputs import (
    MAX_BODY_BYTES,
    check_fields,
    check_query,
    opaque_id,
    parse_bool,
    parse_cursor,
    parse_kind,
    parse_limit,
    parse_reason,
    parse_rollback,
    parse_state,
    path_param,
    read_json_object,
    single,
)
from controlplane.api.labels import parse_labels_patch, parse_selector
from controlplane.api.limits import ReadLimits, limited
from controlplane.api.openapi import openapi_document
from controlplane.api.ports import ControlPlaneAPI
from controlplane.audit.sources import parse_instant
from controlplane.config import Settings
from controlplane.errors import BadRequest
from policies.limits import RESERVED_IDS
from sessions.clock import SystemClock

__all__ = ["ASSIGNMENT_COLUMNS", "ROUTES", "RouteSpec", "add_routes", "assignments_csv"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One REST route; ``role`` None means no authentication; ``expensive``: a read limited
    per token (``controlplane.api.limits``)."""

    method: str
    path: str
    handler: str  # method name on the handler object; also the OpenAPI operationId
    role: Role | None
    expensive: bool = False


ROUTES: Final[tuple[RouteSpec, ...]] = (
    RouteSpec("GET", "/v1/sessions", "list_sessions", Role.VIEWER),
    RouteSpec("GET", "/v1/sessions/{session_id}", "get_session", Role.VIEWER),
    RouteSpec("PATCH", "/v1/sessions/{session_id}/labels", "relabel_session", Role.COMPLIANCE),
    RouteSpec("GET", "/v1/sessions/{session_id}/log", "session_log", Role.VIEWER, expensive=True),
    RouteSpec(
        "GET", "/v1/sessions/{session_id}/config-at", "config_at", Role.COMPLIANCE, expensive=True
    ),
    RouteSpec("POST", "/v1/policies", "publish_policy", Role.EXPERIMENTER),
    RouteSpec("POST", "/v1/policies/preview", "preview_policy", Role.EXPERIMENTER),
    RouteSpec("GET", "/v1/policies", "list_policies", Role.VIEWER),
    RouteSpec("GET", "/v1/policies/{policy_id}", "get_policy", Role.VIEWER),
    # experimenters may retire / roll back experiment policies they own
    # (controlplane.intake.authority)
    RouteSpec("DELETE", "/v1/policies/{policy_id}", "retire_policy", Role.EXPERIMENTER),
    RouteSpec("GET", "/v1/policies/{policy_id}/versions", "policy_versions", Role.VIEWER),
    RouteSpec("GET", "/v1/policies/{policy_id}/rollout", "rollout_status", Role.VIEWER),
    RouteSpec("GET", "/v1/policies/{policy_id}/rollout/stream", "rollout_stream", Role.VIEWER),
    RouteSpec("POST", "/v1/policies/{policy_id}/rollback", "rollback_policy", Role.EXPERIMENTER),
    # progressive waves (docs/policies.md#waves): the same ownership rules as a rollback
    RouteSpec("POST", "/v1/policies/{policy_id}/promote", "promote_policy", Role.EXPERIMENTER),
    RouteSpec("POST", "/v1/policies/{policy_id}/pause", "pause_policy", Role.EXPERIMENTER),
    RouteSpec("POST", "/v1/policies/{policy_id}/resume", "resume_policy", Role.EXPERIMENTER),
    # an admin hands a policy id to another team (docs/security.md#transfers)
    RouteSpec("POST", "/v1/policies/{policy_id}/transfer", "transfer_policy", Role.ADMIN),
    RouteSpec("GET", "/v1/experiments/{key}", "experiment_summary", Role.VIEWER),
    RouteSpec(
        "GET",
        "/v1/experiments/{key}/assignments",
        "experiment_assignments",
        Role.VIEWER,
        expensive=True,
    ),
    RouteSpec(
        "GET", "/v1/experiments/{key}/timeline", "experiment_timeline", Role.VIEWER, expensive=True
    ),
    RouteSpec("GET", "/v1/audit/verify", "verify_audit", Role.COMPLIANCE, expensive=True),
    RouteSpec("GET", "/readyz", "readyz", None),
    RouteSpec("GET", "/openapi.json", "openapi", None),
)

# a reserved word (POST /v1/policies/preview) is never a policy id: GET or DELETE
# /v1/policies/preview answer 405 (Allow: POST), not a lookup of a policy named "preview"
POLICY_ID_SEGMENT: Final = (
    "{policy_id:" + "".join(f"(?!{word}$)" for word in sorted(RESERVED_IDS)) + "[^{}/]+}"
)

ASSIGNMENT_COLUMNS: Final = (
    "session_id", "policy", "version", "variant", "bucket_by", "bucket_value", "kind", "model",
    "assigned_at", "state", "iteration", "first_assigned_at", "exposed_at", "left_at",
    "upstream_session_id", "labels",
)  # fmt: skip


def _items(items: list[dict[str, Any]], next_cursor: str | None = None) -> web.Response:
    return web.json_response({"items": items, "next": next_cursor})


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def assignments_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV with a header row: the documented columns first, then any extra keys, sorted."""
    extra = sorted({key for row in rows for key in row} - set(ASSIGNMENT_COLUMNS))
    columns = [*ASSIGNMENT_COLUMNS, *extra]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return out.getvalue()


_LOG_CURSOR = re.compile(r"seq-([0-9]{1,18})")


def _assignment_page(
    rows: list[dict[str, Any]], after: str | None, limit: int | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Rows after the cursor ``"<session id>/<iteration>"`` (ids never hold '/'), at most
    ``limit`` (None: all), and the cursor of the next page (None: this is the last)."""
    if after is not None:  # any other text: rows of later session ids (as a session list)
        session_id, _, iteration = after.rpartition("/")
        numbered = bool(session_id) and iteration.isascii() and iteration.isdigit()
        mark = (session_id, int(iteration)) if numbered else (after, 0)
        rows = [r for r in rows if (r["session_id"], int(r.get("iteration", 1))) > mark]
    if limit is None or len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    last = page[-1]
    return page, f"{last['session_id']}/{int(last.get('iteration', 1))}"


def _log_cursor(cursor: str | None) -> int:
    """The seq a session log page starts after (0 for the first page)."""
    if cursor is None:
        return 0
    found = _LOG_CURSOR.fullmatch(cursor)
    if found is None:
        raise BadRequest("query parameter 'cursor' is not a cursor returned by this endpoint")
    return int(found.group(1))


def _seq(entry: Mapping[str, Any]) -> int:
    seq = entry.get("seq")
    return seq if isinstance(seq, int) else 0


def _wants_csv(request: web.Request) -> bool:
    fmt = single(request.query, "format")
    if fmt is not None:
        if fmt not in ("json", "csv"):
            raise BadRequest(f"query parameter 'format' must be json or csv, got {fmt!r:.40}")
        return fmt == "csv"
    accept = request.headers.get("Accept", "")
    return any(part.split(";")[0].strip() == "text/csv" for part in accept.split(","))


class _Handlers:
    """Route handlers bound to one service."""

    def __init__(self, service: ControlPlaneAPI, max_body_bytes: int, limits: ReadLimits) -> None:
        self._service = service
        self._limits = limits
        self._max_body = max_body_bytes
        self.documents = DocumentReader(max_body_bytes)
        self._openapi = openapi_document()

    # -- sessions ------------------------------------------------------------------------------

    async def list_sessions(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        check_query(q, ("selector", "kind", "state", "limit", "cursor", "upstream_id"))
        selector = parse_selector(q.getall("selector", []))
        kind = parse_kind(single(q, "kind"))
        state = parse_state(single(q, "state"))
        limit = parse_limit(single(q, "limit"))
        cursor = parse_cursor(single(q, "cursor"))
        upstream_id = single(q, "upstream_id")
        if upstream_id is not None:
            upstream_id = opaque_id("query parameter 'upstream_id'", upstream_id)
        elif selector or kind is not None or state is not None:  # a filter may walk the index
            await self._limits.take(request[PRINCIPAL].digest, "list_sessions")
        items, next_cursor = await self._service.list_sessions(
            selector=selector, kind=kind, state=state, limit=limit, cursor=cursor,
            upstream_id=upstream_id,
        )  # fmt: skip
        role = request[PRINCIPAL].role
        return _items([shown_session(item, role) for item in items], next_cursor)

    async def get_session(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ())
        session_id = path_param(request, "session_id")
        body = await self._service.get_session(session_id)
        return web.json_response(shown_session(body, request[PRINCIPAL].role))

    async def relabel_session(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ())
        session_id = path_param(request, "session_id")
        labels = parse_labels_patch(await read_json_object(request, self._max_body))
        actor = request[PRINCIPAL].actor
        return web.json_response(
            await self._service.relabel_session(session_id, labels, actor=actor)
        )

    async def session_log(self, request: web.Request) -> web.StreamResponse:
        """Entries in seq order, ``limit`` per page; ``next`` is ``seq-N`` (entries after N)."""
        check_query(request.query, ("limit", "cursor"))
        session_id = path_param(request, "session_id")
        limit = parse_limit(single(request.query, "limit"))
        after = _log_cursor(parse_cursor(single(request.query, "cursor")))
        entries = await self._service.session_log(session_id)
        page = [e for e in entries if _seq(e) > after][: limit + 1]
        more = len(page) > limit
        page = page[:limit]
        return _items(page, f"seq-{_seq(page[-1])}" if more else None)

    async def config_at(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ("at", "public_key"))
        session_id = path_param(request, "session_id")
        raw = single(request.query, "at")
        if raw is None:
            raise BadRequest("query parameter 'at' is required (RFC 3339 or Unix seconds)")
        try:
            at = parse_instant(raw)
        except ValueError as exc:
            raise BadRequest(f"query parameter 'at': {exc}") from None
        keys = request.query.getall("public_key", [])
        return web.json_response(await self._service.config_at(session_id, at, public_keys=keys))

    # -- policies ------------------------------------------------------------------------------

    async def publish_policy(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ())
        doc = await self.documents.read(request)
        principal = request[PRINCIPAL]
        check_publish_allowed(principal, doc)
        result = await self._service.publish_policy(
            doc, actor=principal.actor, role=principal.role, team=principal.team
        )
        headers = {}
        if isinstance(result.get("id"), str):
            headers["Location"] = f"/v1/policies/{result['id']}"
        status = 200 if result.get("unchanged") else 201  # identical: no new version
        return web.json_response(result, status=status, headers=headers)

    async def preview_policy(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ())
        doc = await self.documents.read(request)
        principal = request[PRINCIPAL]
        check_publish_allowed(principal, doc)  # previewed under the publish rules of its role
        return web.json_response(
            await self._service.preview_policy(doc, role=principal.role, team=principal.team)
        )

    async def list_policies(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ("include_retired",))
        include = parse_bool("include_retired", single(request.query, "include_retired"))
        role = request[PRINCIPAL].role
        items = self._service.list_policies(include_retired=include)
        return _items([shown_actor(item, role) for item in items])

    async def get_policy(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ())
        body = self._service.get_policy(path_param(request, "policy_id"))
        return web.json_response(shown_actor(body, request[PRINCIPAL].role))

    async def retire_policy(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ("reason",))
        policy_id = path_param(request, "policy_id")
        reason = parse_reason(single(request.query, "reason"))
        principal = request[PRINCIPAL]
        return web.json_response(
            await self._service.retire_policy(
                policy_id,
                actor=principal.actor,
                role=principal.role,
                reason=reason,
                team=principal.team,
            )
        )

    async def policy_versions(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        check_query(q, ("limit", "cursor"))
        items, next_cursor = self._service.policy_versions(
            path_param(request, "policy_id"), limit=parse_limit(single(q, "limit")),
            cursor=parse_cursor(single(q, "cursor")),
        )  # fmt: skip
        role = request[PRINCIPAL].role
        return _items([shown_actor(item, role) for item in items], next_cursor)

    async def rollout_status(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ())
        policy_id = path_param(request, "policy_id")
        body = await self._service.rollout_status(policy_id)
        return web.json_response(shown_rollout(body, request[PRINCIPAL].role))

    async def rollout_stream(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ())
        return await rollout_stream(request, self._service, path_param(request, "policy_id"))

    async def rollback_policy(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ())
        policy_id = path_param(request, "policy_id")
        body = await read_json_object(request, self._max_body)
        to_version = parse_rollback(body)
        reason = parse_reason(body.get("reason"), where='"reason"')
        principal = request[PRINCIPAL]
        return web.json_response(
            await self._service.rollback_policy(
                policy_id,
                to_version,
                actor=principal.actor,
                role=principal.role,
                reason=reason,
                team=principal.team,
            )
        )

    async def transfer_policy(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ())
        body = await read_json_object(request, self._max_body)
        check_fields(body, ("team", "reason"))
        team, reason = body.get("team"), parse_reason(body.get("reason"), where='"reason"')
        if not isinstance(team, str) or reason is None:
            raise BadRequest('a transfer needs "team" (the new owner team) and a "reason"')
        team = team.strip()  # as in the token configuration
        principal = request[PRINCIPAL]
        return web.json_response(await self._service.transfer_policy(
            path_param(request, "policy_id"), team, actor=principal.actor, role=principal.role,
            reason=reason))  # fmt: skip

    async def promote_policy(self, request: web.Request) -> web.StreamResponse:
        return await self._wave_action(request, "promote")

    async def pause_policy(self, request: web.Request) -> web.StreamResponse:
        return await self._wave_action(request, "pause")

    async def resume_policy(self, request: web.Request) -> web.StreamResponse:
        return await self._wave_action(request, "resume")

    async def _wave_action(self, request: web.Request, action: str) -> web.StreamResponse:
        check_query(request.query, ())
        policy_id = path_param(request, "policy_id")
        principal = request[PRINCIPAL]
        return web.json_response(
            await self._service.wave_action(
                policy_id,
                action,
                actor=principal.actor,
                role=principal.role,
                team=principal.team,
            )
        )

    # -- experiments, audit, probes ------------------------------------------------------------

    async def experiment_summary(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ())
        return web.json_response(await self._service.experiment_summary(path_param(request, "key")))

    async def experiment_timeline(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ())
        return web.json_response(
            await self._service.experiment_timeline(path_param(request, "key"))
        )

    async def experiment_assignments(self, request: web.Request) -> web.StreamResponse:
        """Every row, or with ``limit`` a page of that many (JSON ``next`` / CSV header
        ``X-Next-Cursor``: the cursor of the following page)."""
        q = request.query
        check_query(q, ("format", "limit", "cursor"))
        key = path_param(request, "key")
        as_csv = _wants_csv(request)
        raw_limit = single(q, "limit")
        limit = parse_limit(raw_limit) if raw_limit is not None else None  # None: every row
        after = parse_cursor(single(q, "cursor"))
        rows = await self._service.experiment_assignments(key)
        page, next_cursor = _assignment_page(rows, after, limit)
        if not as_csv:
            return _items(page, next_cursor)
        filename = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        headers = {"Content-Disposition": f'attachment; filename="assignments-{filename}.csv"'}
        if next_cursor is not None:
            headers["X-Next-Cursor"] = next_cursor
        return web.Response(
            text=assignments_csv(page), content_type="text/csv", charset="utf-8", headers=headers
        )

    async def verify_audit(self, request: web.Request) -> web.StreamResponse:
        check_query(request.query, ("session", "public_key"))
        session_id = single(request.query, "session") or None
        if session_id is not None:
            opaque_id("query parameter 'session'", session_id)
        keys = request.query.getall("public_key", [])
        answer = await self._service.verify_audit(session_id, public_keys=keys)
        return web.json_response({**answer, "next": None})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        try:
            ready, checks = self._service.readiness()
        except Exception:  # a probe answers 503, not 500, when the check itself breaks
            log.exception("readiness check failed")
            ready, checks = False, {"readiness": "check failed; see the server log"}
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._openapi)


def add_routes(
    app: web.Application,
    service: ControlPlaneAPI,
    settings: Settings,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    limits: ReadLimits | None = None,
) -> None:
    """Mount every route of :data:`ROUTES` on ``app``; the expensive reads through ``limits``
    (default: from ``settings``, uncounted).

    Also installs, once each, :func:`~controlplane.api.errors.error_middleware` (outermost),
    the token store built from ``settings`` and the redaction of aiohttp's own protocol-error
    log records (:func:`~controlplane.api.errors.install_log_redaction`; process-wide, as
    logging is). Call before the app starts.
    """
    install_log_redaction()
    if error_middleware not in app.middlewares:
        app.middlewares.insert(0, error_middleware)
    install_tokens(app, settings)
    if limits is None:
        limits = ReadLimits(SystemClock(), burst=settings.expensive_read_burst,
                            rate_per_s=settings.expensive_read_rate_per_s)  # fmt: skip
    handlers = _Handlers(service, max_body_bytes, limits)

    async def stop_document_workers(_: web.Application) -> None:
        handlers.documents.close()

    app.on_cleanup.append(stop_document_workers)
    for spec in ROUTES:
        handler = getattr(handlers, spec.handler)
        if spec.expensive:
            handler = limited(limits, spec.handler, handler)
        if spec.role is not None:
            handler = require(spec.role, handler)
        path = spec.path.replace("{policy_id}", POLICY_ID_SEGMENT)
        app.router.add_route(spec.method, path, handler, name="api." + spec.handler)

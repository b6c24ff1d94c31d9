"""Request input parsing and validation for the REST API.

Every function either returns a clean, typed value or raises ``BadRequest`` (or
``PayloadTooLarge``) with a message that names the parameter and the rule it broke, so that a
bad request is refused before anything reaches the service (no partial writes).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Final

import yaml
from aiohttp import web
from multidict import MultiMapping

from controlplane.errors import BadRequest, PayloadTooLarge
from policies.errors import PolicyValidationError, Violation
from policies.fields import printable, utf8_problem
from policies.limits import REASON_MAX_CHARS
from sessions.model import SessionState

__all__ = [
    "KINDS",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "STATES",
    "YAML_TYPES",
    "FrameNotJson",
    "UnsafeFrame",
    "check_fields",
    "check_query",
    "opaque_id",
    "parse_bool",
    "parse_cursor",
    "parse_document",
    "parse_frame",
    "parse_json",
    "parse_kind",
    "parse_limit",
    "parse_reason",
    "parse_rollback",
    "parse_state",
    "parse_yaml",
    "path_param",
    "read_body",
    "read_document",
    "read_json_object",
    "single",
    "tname",
]

MAX_BODY_BYTES: Final = 1024 * 1024
KINDS: Final = ("streaming-v3", "voice-agent-v1")
STATES: Final = tuple(state.value for state in SessionState)
YAML_TYPES: Final = frozenset(
    {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}
)
MAX_LIST_LIMIT: Final = 1000
MAX_DEPTH: Final = 32
DEFAULT_LIST_LIMIT: Final = 100
# too deep for the parser itself (a RecursionError): the same limit, named
_TOO_DEEP: Final = f"request body is nested too deeply (limit {MAX_DEPTH} levels)"

_POLICY_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,255}")
_OPAQUE_ID = re.compile(r"[^\s/\x00-\x1f\x7f]{1,256}")
_CURSOR = re.compile(r"[\x21-\x7e]{1,1024}")
# the OpenAPI document says boolean: exactly "true" or "false" (an empty value is not one)
_TRUE: Final = frozenset({"true"})
_FALSE: Final = frozenset({"false"})


# -- bodies ------------------------------------------------------------------------------------


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""

    def too_large() -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body is over the {limit}-byte limit", details={"limit_bytes": limit}
        )

    if request.content_length is not None and request.content_length > limit:
        raise too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes, code: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not UTF-8 (byte {exc.start})", code=code) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """JSON text -> value; 400 ``bad_json`` naming the position (no NaN, no duplicate keys)."""
    text = _decode(raw, "bad_json").removeprefix("\ufeff")  # a BOM, as YAML bodies allow it
    if not text.strip():
        raise BadRequest("request body is empty; expected a JSON object", code="bad_json")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="bad_json",
        ) from None
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="bad_json") from None
    except RecursionError:
        raise BadRequest(_TOO_DEEP, code="bad_json") from None
    _check_tree(value, "bad_json")
    return value


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without aliases (no billion laughs), duplicate keys or implicit timestamps."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                break  # SafeLoader refuses it with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _check_tree(value: Any, code: str, path: str = "", depth: int = 0) -> None:
    """JSON types only (YAML may build others), string keys, at most MAX_DEPTH levels, text
    that can be written as UTF-8 (JSON and YAML may spell a lone surrogate, ``"\\ud800"``,
    which the version log, NATS and Redis could never store), finite numbers."""
    where = path or "the document"
    if depth > MAX_DEPTH:
        raise BadRequest(f"request body is nested deeper than {MAX_DEPTH} levels", code=code)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadRequest(f"{where}: key {key!r:.40} must be a string", code=code)
            name = printable(key)
            if (problem := utf8_problem(key)) is not None:
                raise BadRequest(f"{where}: key {name[:40]!r} {problem}", code=code)
            _check_tree(item, code, f"{path}.{name}" if path else name, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_tree(item, code, f"{path}[{i}]", depth + 1)
    elif isinstance(value, str):
        if (problem := utf8_problem(value)) is not None:
            raise BadRequest(f"{where}: {problem}", code=code)
    elif isinstance(value, float) and not math.isfinite(value):  # 1e999 parses as inf
        raise BadRequest(f"{where}: {value} is not a finite number", code=code)
    elif not isinstance(value, int | float | bool) and value is not None:
        raise BadRequest(f"{where}: type {type(value).__name__} is not allowed", code=code)


class FrameNotJson(ValueError):
    """A WebSocket text frame that is not JSON at all (a syntax error)."""


class UnsafeFrame(ValueError):
    """JSON that cannot be recorded faithfully: a duplicate key (parsers disagree on which one
    wins), ``NaN``/``Infinity``, a lone surrogate, more than ``MAX_DEPTH`` levels."""


def parse_frame(text: str) -> Any:
    """A WebSocket text frame's JSON under the rules of a REST body (see :func:`parse_json`).

    Raises :class:`FrameNotJson` or :class:`UnsafeFrame`, both ``ValueError`` with a message
    that names the problem (and the line/column of a syntax error).
    """
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise FrameNotJson(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise UnsafeFrame(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # a hook's refusal, or an integer over the digit limit
        raise UnsafeFrame(f"invalid JSON: {exc}") from None
    try:
        _check_tree(value, "bad_json")
    except BadRequest as exc:
        raise UnsafeFrame(exc.message.replace("request body", "JSON", 1)) from None
    return value


def parse_yaml(raw: bytes) -> Any:
    """YAML text -> JSON-compatible value; 400 ``bad_yaml`` naming line and column."""
    text = _decode(raw, "bad_yaml")
    if not text.strip():
        raise BadRequest("request body is empty; expected a YAML mapping", code="bad_yaml")
    try:
        value = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        if (exc.problem or "").startswith("but found another document"):  # a '---'
            message = f"request body holds more than one YAML document (the second starts{where})"
            raise BadRequest(f"{message}: one policy per request", code="bad_yaml") from None
        raise BadRequest(
            f"request body is not valid YAML: {exc.problem or exc.context}{where}", code="bad_yaml"
        ) from None
    except yaml.YAMLError as exc:
        raise BadRequest(f"request body is not valid YAML: {exc}", code="bad_yaml") from None
    except RecursionError:
        raise BadRequest(_TOO_DEEP, code="bad_yaml") from None
    _check_tree(value, "bad_yaml")
    return value


def parse_document(raw: bytes, content_type: str) -> dict[str, Any]:
    """A policy document from JSON or (by content type) YAML.

    Text that does not parse is 400 (``bad_json``/``bad_yaml``); parsed text that is not a
    mapping is an invalid policy (422, like ``policies.model.parse_policy`` answers it).
    """
    value = parse_yaml(raw) if content_type in YAML_TYPES else parse_json(raw)
    if not isinstance(value, dict):
        raise PolicyValidationError(
            [Violation("<document>", "type", f"a policy must be a mapping, got {tname(value)}")]
        )
    return value


async def read_document(request: web.Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """A policy document: JSON, or YAML with ``Content-Type: application/yaml``/``text/yaml``."""
    return parse_document(await read_body(request, limit), request.content_type)


async def read_json_object(request: web.Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    value = parse_json(await read_body(request, limit))
    if not isinstance(value, dict):
        raise BadRequest(f"request body must be a JSON object, got {tname(value)}")
    return value


def tname(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )


def check_fields(body: Mapping[str, Any], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(allowed)})"
        )


def parse_rollback(body: Mapping[str, Any]) -> int:
    """``{"to": N}`` (or ``{"version": N}``) -> N, an integer >= 1 (``reason``: parse_reason)."""
    check_fields(body, ("to", "version", "reason"))
    values = {name: body[name] for name in ("to", "version") if name in body}
    if not values:
        raise BadRequest('body must be {"to": <version>}: field "to" is required')
    if len(values) == 2:
        raise BadRequest('send either "to" or its alias "version", not both')
    name, value = next(iter(values.items()))
    if isinstance(value, float) and value.is_integer() and 1 <= value <= 2**53 - 1:
        value = int(value)  # JSON Schema's integer: 7.0 is 7 (the document says integer)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f'"{name}" must be an integer >= 1, got {value!r:.40}')
    return value


# -- query and path ----------------------------------------------------------------------------


def check_query(query: MultiMapping[str], allowed: Iterable[str]) -> None:
    """Refuse unknown query parameters (a typo must not silently widen a listing)."""
    allowed = tuple(allowed)
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        hint = f"allowed: {', '.join(allowed)}" if allowed else "this endpoint takes none"
        raise BadRequest(
            f"unknown query parameter(s) {', '.join(map(repr, unknown))} ({hint})",
            details={"unknown": unknown},
        )


def parse_reason(value: Any, *, where: str = "query parameter 'reason'") -> str | None:
    """A change's reason: text up to 2000 characters; absent or blank means none."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string, got {tname(value)}")
    if len(value) > REASON_MAX_CHARS:
        raise BadRequest(f"{where} is {len(value)} characters, limit is {REASON_MAX_CHARS}",
                         details={"limit": REASON_MAX_CHARS})  # fmt: skip
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise BadRequest(f"{where} holds a lone surrogate: not valid UTF-8 text")
    return value.strip() or None


def single(query: MultiMapping[str], name: str) -> str | None:
    """A query parameter given at most once."""
    values = query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"query parameter {name!r} may be given only once")
    return values[0] if values else None


def parse_bool(name: str, value: str | None, default: bool = False) -> bool:
    if value is None:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"query parameter {name!r} must be true or false, got {value!r:.40}")


def parse_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIST_LIMIT
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIST_LIMIT:
        raise BadRequest(
            f"query parameter 'limit' must be an integer from 1 to {MAX_LIST_LIMIT}, "
            f"got {value!r:.40}"
        )
    return int(value)


def parse_cursor(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not _CURSOR.fullmatch(value):
        raise BadRequest("query parameter 'cursor' is not a cursor returned by this endpoint")
    return value


def parse_kind(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in KINDS:  # an empty value is not a kind either (the document's enum)
        raise BadRequest(
            f"query parameter 'kind' must be one of {', '.join(KINDS)}, got {value!r:.40}"
        )
    return value


def parse_state(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if value not in STATES:
        raise BadRequest(
            f"query parameter 'state' must be one of {', '.join(STATES)}, got {value!r:.40}"
        )
    return value


def opaque_id(what: str, value: str) -> str:
    """A session id or experiment key: 1-256 characters, no whitespace, '/' or controls."""
    if not _OPAQUE_ID.fullmatch(value):
        raise BadRequest(
            f"{what} must be 1-256 characters without spaces, '/' or control characters"
        )
    return value


def path_param(request: web.Request, name: str) -> str:
    """A path parameter: policy ids match [a-z0-9][a-z0-9-]*, others are opaque ids."""
    value = request.match_info[name]
    if name != "policy_id":
        return opaque_id(name.replace("_", " "), value)
    if not _POLICY_ID.fullmatch(value):
        raise BadRequest(
            f"policy id {value!r:.80} must match [a-z0-9][a-z0-9-]* (at most 256 chars)"
        )
    return value

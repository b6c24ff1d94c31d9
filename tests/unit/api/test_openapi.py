"""The OpenAPI document describes exactly the routes the app serves, and is well formed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import openapi_spec_validator
from aiohttp import web

from controlplane.api.openapi import EXTERNAL_PATHS, openapi_document
from controlplane.api.routes import ROUTES, add_routes
from controlplane.rollouts.counts import COUNTERS
from policies.model import Guard
from tests.unit.api.fake_service import FakeControlPlane, serve_fake, settings_with_tokens

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method.upper(), path, op


def resolve(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            assert part in node, f"unresolvable $ref {ref}"
            node = node[part]
    return node


def all_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_refs(item)


def test_document_lists_every_registered_route_and_nothing_else() -> None:
    app = web.Application()
    add_routes(app, FakeControlPlane(), settings_with_tokens())
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {
        (method, path)
        for method, path, _ in operations(openapi_document())
        if path not in EXTERNAL_PATHS
    }
    assert served == documented


def test_operation_ids_and_roles_match_the_route_table() -> None:
    ops = {(m, p): op for m, p, op in operations(openapi_document())}
    for spec in ROUTES:
        op = ops[(spec.method, spec.path)]
        assert op["operationId"] == spec.handler
        if spec.role is None:
            assert op["security"] == []
            assert "x-required-role" not in op
        else:
            assert op["x-required-role"] == spec.role.label
            assert "401" in op["responses"] and "403" in op["responses"]


def test_document_is_well_formed() -> None:
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    for ref in all_refs(doc):
        resolve(doc, {"$ref": ref})
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    for requirement in doc["security"]:
        assert set(requirement) <= set(schemes)
    seen_ids: set[str] = set()
    for method, path, op in operations(doc):
        assert op["operationId"] not in seen_ids
        seen_ids.add(op["operationId"])
        assert op.get("summary"), (method, path)
        assert any(code.startswith("2") for code in op["responses"]), (method, path)
        for code, response in op["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d", code)
            assert resolve(doc, response)["description"]
        params = [resolve(doc, p) for p in op.get("parameters", [])]
        for param in params:
            assert param["in"] in ("path", "query", "header", "cookie")
            assert "schema" in param
        declared = {p["name"] for p in params if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
        assert all(p["required"] for p in params if p["in"] == "path")
        if method in ("GET", "DELETE"):
            assert "requestBody" not in op


def test_policy_schema_covers_the_documented_fields() -> None:
    schemas = openapi_document()["components"]["schemas"]
    policy = schemas["PolicyDocument"]["properties"]
    assert set(policy) == {
        "id",
        "version",
        "priority",
        "description",
        "match",
        "set",
        "defaults",
        "lock",
        "rollout",
        "experiment",
        "apply",
        "apply_deadline_s",
        "guard",
        "reason",
    }
    assert set(policy["match"]["properties"]) == {
        "kind",
        "model",
        "labels",
        "labels_absent",
        "labels_not",
    }
    assert set(schemas["Config"]["properties"]) == {
        "prompt",
        "system_prompt",
        "agent_context",
        "keyterms",
        "min_turn_silence_ms",
        "max_turn_silence_ms",
        "vad_threshold",
    }
    assert set(policy["rollout"]["properties"]) == {
        "percent",
        "waves",
        "wave_interval_s",
        "salt",
        "bucket_by",
    }
    assert set(policy["experiment"]["properties"]) == {
        "key",
        "bucket_by",
        "salt",
        "iteration",
        "variants",
    }
    assert policy["apply"]["enum"] == ["immediate", "next_turn"]
    assert set(policy["guard"]["properties"]) == set(Guard.model_fields)
    rollout = schemas["Rollout"]["properties"]
    assert rollout["state"]["enum"] == ["active", "halted", "rolled_back", "retired"]
    assert set(rollout["totals"]["properties"]) == set(COUNTERS)
    error = schemas["Error"]["properties"]["error"]
    assert error["required"] == ["code", "message", "details"]


def test_the_document_passes_openapi_spec_validator() -> None:
    openapi_spec_validator.validate(openapi_document())


async def test_served_document_is_public_and_matches() -> None:
    client = await serve_fake(FakeControlPlane())
    try:
        resp = await client.get("/openapi.json")
        assert resp.status == 200
        assert await resp.json() == openapi_document()
    finally:
        await client.close()

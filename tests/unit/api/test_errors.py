"""The error middleware: every failure answers the JSON error shape, never a bare 500."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from controlplane.errors import Unavailable, ValidationFailed
from tests.unit.api.fake_service import TOKENS, FakeControlPlane, serve_fake

ADMIN = {"Authorization": f"Bearer {TOKENS['admin']}"}
Client = TestClient[web.Request, web.Application]


@pytest.fixture
def fake() -> FakeControlPlane:
    return FakeControlPlane()


@pytest.fixture
async def client(fake: FakeControlPlane) -> AsyncIterator[Client]:
    c = await serve_fake(fake)
    yield c
    await c.close()


async def error_of(resp: Any, status: int, code: str) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status, body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("{not json", "line 1 column 2"),
        ("", "empty"),
        ('{"id": "a", "id": "b"}', "duplicate key 'id'"),
        ('{"id": NaN}', "NaN"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[" * 100_000, "nested too deeply (limit 32 levels)"),
        ('{"a": ' + "[" * 40 + "]" * 40 + "}", "deeper than 32 levels"),
    ],
)
async def test_malformed_json_is_400_bad_json(
    client: Client, fake: FakeControlPlane, data: str | bytes, fragment: str
) -> None:
    headers = {**ADMIN, "Content-Type": "application/json"}
    resp = await client.post("/v1/policies", data=data, headers=headers)
    error = await error_of(resp, 400, "bad_json")
    assert fragment in error["message"]
    assert fake.calls == []


@pytest.mark.parametrize(
    ("body", "content_type", "got"),
    [
        ("[1, 2]", "application/json", "array"),
        ('"x"', "application/json", "string"),
        ("null", "application/json", "null"),
        ("- a\n- b\n", "application/yaml", "array"),
        ("just text\n", "text/yaml", "string"),
    ],
)
async def test_policy_body_that_is_not_a_mapping_is_an_invalid_policy(
    client: Client, fake: FakeControlPlane, body: str, content_type: str, got: str
) -> None:
    headers = {**ADMIN, "Content-Type": content_type}
    resp = await client.post("/v1/policies", data=body, headers=headers)
    error = await error_of(resp, 422, "invalid_policy")
    assert error["details"]["violations"] == [
        {"field": "<document>", "rule": "type", "message": f"a policy must be a mapping, got {got}"}
    ]
    assert fake.calls == []


async def test_yaml_policy_is_accepted(client: Client, fake: FakeControlPlane) -> None:
    doc = (
        "id: eu-disclosure\nversion: 7\nset:\n  prompt: hi\n  keyterms: [a, b]\nwhen: 2024-01-01\n"
    )
    headers = {**ADMIN, "Content-Type": "application/yaml; charset=utf-8"}
    resp = await client.post("/v1/policies", data=doc, headers=headers)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["version"] == 7
    sent = fake.calls[0][1]
    assert sent["set"] == {"prompt": "hi", "keyterms": ["a", "b"]}
    assert sent["when"] == "2024-01-01"  # timestamps stay strings


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ("id: [unclosed\n", "line"),
        ("a: &x [1]\nb: *x\n", "aliases"),
        ("id: a\nid: b\n", "duplicate key"),
        ("1: a\n", "must be a string"),
        ("id: a\n---\nid: b\n", "more than one YAML document (the second starts at line 2"),
        ("id: !!python/object:os.system x\n", "not valid YAML"),
        ("[" * 5000, "nested too deeply (limit 32 levels)"),
        ("a: " + "[" * 40 + "]" * 40 + "\n", "deeper than 32 levels"),
        ("? [a, b]\n: c\n", "unhashable key"),
        ("{[a]: b}\n", "unhashable key"),
    ],
)
async def test_bad_yaml_is_400_bad_yaml(
    client: Client, fake: FakeControlPlane, doc: str, fragment: str
) -> None:
    headers = {**ADMIN, "Content-Type": "text/yaml"}
    resp = await client.post("/v1/policies", data=doc, headers=headers)
    error = await error_of(resp, 400, "bad_yaml")
    assert fragment in error["message"]
    assert fake.calls == []


async def test_policy_validation_error_is_422_with_violations(client: Client) -> None:
    doc = {"id": "Bad_ID", "set": {"keyterms": ["k"] * 101}}
    resp = await client.post("/v1/policies", json=doc, headers=ADMIN)
    error = await error_of(resp, 422, "invalid_policy")
    violations = error["details"]["violations"]
    assert {v["field"] for v in violations} == {"id", "set.keyterms"}
    assert {
        "field": "set.keyterms",
        "rule": "max_items",
        "message": "has 101 items",
        "limit": 100,
    } in violations
    assert "2 violations" in error["message"]


async def test_service_validation_failed_keeps_details(
    client: Client, fake: FakeControlPlane
) -> None:
    fake.raise_next = ValidationFailed(
        "set.prompt is too long", details={"violations": [{"field": "set.prompt"}]}
    )
    resp = await client.post("/v1/policies/preview", json={"id": "a"}, headers=ADMIN)
    error = await error_of(resp, 422, "invalid_policy")
    assert error["details"]["violations"] == [{"field": "set.prompt"}]


async def test_not_found_from_service_and_router(client: Client) -> None:
    resp = await client.get("/v1/sessions/nope", headers=ADMIN)
    error = await error_of(resp, 404, "not_found")
    assert "nope" in error["message"]
    resp = await client.get("/v1/nothing-here", headers=ADMIN)
    error = await error_of(resp, 404, "not_found")
    assert "GET /v1/nothing-here" in error["message"]


async def test_method_not_allowed_is_json_with_allow_header(client: Client) -> None:
    resp = await client.put("/v1/sessions", headers=ADMIN)
    error = await error_of(resp, 405, "method_not_allowed")
    assert error["details"]["allowed"] == ["GET"]
    assert resp.headers["Allow"] == "GET"


async def test_conflict_is_409(client: Client) -> None:
    resp = await client.post(
        "/v1/policies", json={"id": "eu-disclosure", "version": 1}, headers=ADMIN
    )
    error = await error_of(resp, 409, "version_conflict")
    assert error["details"]["current"] == 2


async def test_oversize_body_is_413_naming_the_limit(
    client: Client, fake: FakeControlPlane
) -> None:
    body = b'{"id": "a", "description": "' + b"x" * (1024 * 1024) + b'"}'
    resp = await client.post("/v1/policies", data=io.BytesIO(body), headers=ADMIN)
    error = await error_of(resp, 413, "payload_too_large")
    assert "1048576-byte limit" in error["message"]
    assert error["details"]["limit_bytes"] == 1048576
    assert fake.calls == []


async def test_oversize_chunked_body_without_length_is_413() -> None:
    fake = FakeControlPlane()
    client = await serve_fake(fake, max_body_bytes=1000)
    try:

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 500

        resp = await client.post("/v1/policies/preview", data=chunks(), headers=ADMIN)
        error = await error_of(resp, 413, "payload_too_large")
        assert error["details"]["limit_bytes"] == 1000
        assert fake.calls == []
    finally:
        await client.close()


async def test_unexpected_exception_is_500_without_leaking(
    client: Client, fake: FakeControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    fake.raise_next = RuntimeError("db password=hunter2 at /srv/secret")
    with caplog.at_level(logging.ERROR, logger="controlplane.api.errors"):
        resp = await client.get("/v1/policies", headers=ADMIN)
    error = await error_of(resp, 500, "internal")
    text = await resp.text()
    assert "hunter2" not in text and "RuntimeError" not in text and "secret" not in text
    ref = error["details"]["ref"]
    assert ref in error["message"]
    logged = [r for r in caplog.records if r.name == "controlplane.api.errors"]
    assert logged and logged[0].exc_info is not None  # traceback kept server-side
    assert ref in logged[0].getMessage()


async def test_unavailable_is_503_with_retry_after(client: Client, fake: FakeControlPlane) -> None:
    fake.raise_next = Unavailable("policy bus is down")
    resp = await client.post("/v1/policies", json={"id": "a"}, headers=ADMIN)
    await error_of(resp, 503, "unavailable")
    assert resp.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("GET", "/v1/sessions?limit=0", None, "'limit' must be an integer from 1 to 1000"),
        ("GET", "/v1/sessions?limit=1001", None, "'limit'"),
        ("GET", "/v1/sessions?limit=ten", None, "'limit'"),
        ("GET", "/v1/sessions?limit=1&limit=2", None, "only once"),
        ("GET", "/v1/sessions?kind=sip", None, "'kind' must be one of"),
        ("GET", "/v1/sessions?state=NOT%20A%20STATE", None, "'state'"),
        ("GET", "/v1/sessions?state=active", None, "'state' must be one of synced, pending"),
        ("GET", "/v1/sessions?cursor=%20", None, "'cursor'"),
        ("GET", "/v1/sessions?selektor=a=b", None, "unknown query parameter(s) 'selektor'"),
        ("GET", "/v1/sessions?selector=a", None, "must be key=value"),
        ("GET", "/v1/policies?include_retired=maybe", None, "'include_retired'"),
        ("GET", "/v1/policies/Not_Valid", None, "policy id"),
        ("GET", "/v1/experiments/upsell-q4/assignments?format=xml", None, "'format'"),
        ("POST", "/v1/policies/eu-disclosure/rollback", {"to": "1"}, '"to" must be an integer'),
        ("POST", "/v1/policies/eu-disclosure/rollback", {"to": True}, '"to" must be an integer'),
        ("POST", "/v1/policies/eu-disclosure/rollback", {"to": 0}, '"to" must be an integer'),
        ("POST", "/v1/policies/eu-disclosure/rollback", {}, '"to" is required'),
        ("POST", "/v1/policies/eu-disclosure/rollback", {"to": 1, "version": 1}, "not both"),
        ("POST", "/v1/policies/eu-disclosure/rollback", {"to": 1, "x": 1}, "unknown field"),
        ("POST", "/v1/policies/eu-disclosure/rollback", [1], "must be a JSON object"),
        ("PATCH", "/v1/sessions/s-1/labels", {"labels": {"a": 1}}, "must be a string or null"),
        ("PATCH", "/v1/sessions/s-1/labels", {"labels": {"a b": "x"}}, "[A-Za-z0-9_.-]{1,63}"),
        ("PATCH", "/v1/sessions/s-1/labels", {"labels": {"k" * 64: "x"}}, "{1,63}"),
        ("PATCH", "/v1/sessions/s-1/labels", {"labels": {"a": "x" * 257}}, "limit is 256"),
        ("PATCH", "/v1/sessions/s-1/labels", {"labels": {"a": "x\ny"}}, "control characters"),
        ("PATCH", "/v1/sessions/s-1/labels", {"labels": {}}, "at least one label"),
        ("PATCH", "/v1/sessions/s-1/labels", {"labels": ["a"]}, "must be an object"),
        ("PATCH", "/v1/sessions/s-1/labels", {"lables": {"a": "b"}}, "unknown field"),
    ],
)
async def test_wrong_inputs_are_400_naming_the_parameter(
    client: Client, fake: FakeControlPlane, method: str, path: str, body: Any, fragment: str
) -> None:
    resp = await client.request(method, path, json=body, headers=ADMIN)
    error = await error_of(resp, 400, "bad_request")
    assert fragment in error["message"]
    assert fake.calls == []  # no partial write, no call at all


async def test_rollback_accepts_version_alias(client: Client, fake: FakeControlPlane) -> None:
    resp = await client.post(
        "/v1/policies/eu-disclosure/rollback", json={"version": 1}, headers=ADMIN
    )
    assert resp.status == 200
    assert (await resp.json())["version"] == 3
    assert fake.calls[0][:3] == ("rollback_policy", "eu-disclosure", 1)


async def test_readyz_is_503_with_checks_when_not_ready(
    client: Client, fake: FakeControlPlane
) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"ready": True, "checks": {"bus": "ok", "registry": "ok"}}
    fake.ready = False
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["bus"] == "down"


async def test_failure_after_a_websocket_started_is_left_to_aiohttp() -> None:
    """The middleware wraps the whole app: it must not answer JSON on an upgraded socket."""

    async def ws_handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello")
        raise RuntimeError("socket handler broke")

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    client = await serve_fake(FakeControlPlane(), app=app)
    try:
        async with client.ws_connect("/ws") as ws:
            assert (await ws.receive_str()) == "hello"
            msg = await ws.receive()
            # not ERROR: a JSON 500 written onto the upgraded socket would corrupt the stream
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), msg
    finally:
        await client.close()

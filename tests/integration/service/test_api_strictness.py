"""Issue 19 item 7 on a real server: reserved policy ids, bounded label conditions, ASCII
digits only, JSON Schema integers, one rollback target, long selectors, and the public-key
form ``/openapi.json`` states."""

from __future__ import annotations

from typing import Any

from controlplane.api.openapi import openapi_document
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest


async def _raw(cp: ControlPlaneUnderTest, method: str, path: str) -> tuple[int, Any, str]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with cp.http.request(method, cp.base + path, headers=headers) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body, resp.headers.get("Allow", "")


async def test_reserved_ids_are_refused_and_never_routed_as_policies(
    cp: ControlPlaneUnderTest,
) -> None:
    refused = await cp.call("POST", "/v1/policies", body={"id": "preview"}, expect=422)
    (violation,) = refused["error"]["details"]["violations"]
    assert (violation["field"], violation["rule"]) == ("id", "reserved")
    for method in ("GET", "DELETE"):
        status, body, allow = await _raw(cp, method, "/v1/policies/preview")
        assert (status, allow) == (405, "POST")
        assert body["error"]["code"] == "method_not_allowed"
    preview = await cp.call("POST", "/v1/policies/preview", body={"id": "p"}, expect=200)
    assert preview  # the route itself still works
    schema = openapi_document()["components"]["schemas"]["PolicyDocument"]["properties"]["id"]
    assert schema["not"] == {"enum": ["preview"]}


async def test_label_conditions_are_capped(cp: ControlPlaneUnderTest) -> None:
    many = {f"k{i}": "v" for i in range(33)}
    for field in ("labels", "labels_not"):
        refused = await cp.call("POST", "/v1/policies", expect=422,
                                body={"id": "caps", "match": {field: many}})  # fmt: skip
        (violation,) = refused["error"]["details"]["violations"]
        assert violation == {"field": f"match.{field}", "rule": "max_items",
                             "message": "limit is 32 items", "limit": 32}  # fmt: skip
    del many["k0"]
    await cp.publish({"id": "caps", "match": {"labels": many, "labels_not": many}})


async def test_digits_are_ascii_and_integers_are_json_schema_integers(
    cp: ControlPlaneUnderTest,
) -> None:
    for path in ("/v1/sessions?limit=%EF%BC%91", "/v1/sessions?limit=%D9%A1",
                 "/v1/sessions/x/config-at?at=%EF%BC%91"):  # fmt: skip
        refused = await cp.call("GET", path, expect=400)
        assert refused["error"]["code"] == "bad_request", path
    await cp.publish({"id": "whole", "priority": 5.0, "set": {"prompt": "a"}})
    await cp.publish({"id": "whole", "version": 2.0, "set": {"prompt": "b"}})
    both = await cp.call("POST", "/v1/policies/whole/rollback", expect=400,
                         body={"to": 1, "version": 1})  # fmt: skip
    assert "not both" in both["error"]["message"]
    rolled = await cp.call("POST", "/v1/policies/whole/rollback", body={"to": 1.0}, expect=200)
    assert rolled["version"] == 3
    shown = await cp.call("GET", "/v1/policies/whole", expect=200)
    assert shown["policy"]["priority"] == 5, shown


async def test_long_selectors_and_public_keys_as_documented(cp: ControlPlaneUnderTest) -> None:
    # a 4096-character selector of 4-byte characters is ~49 KiB encoded: over aiohttp's
    # default 8190-byte request line, within the document's maxLength
    selector = ",".join(f"k{i}=" + "\U0001f600" * 250 for i in range(16))
    assert len(selector) <= 4096
    answer = await cp.call("GET", f"/v1/sessions?selector={selector}", expect=200)
    assert answer == {"items": [], "next": None}
    bad = await cp.call("GET", "/v1/audit/verify?public_key=AAAA", expect=400)
    assert bad["error"]["code"] == "bad_public_key"
    key = "A" * 43 + "="
    assert (await cp.call("GET", f"/v1/audit/verify?public_key={key}", expect=200))["ok"]

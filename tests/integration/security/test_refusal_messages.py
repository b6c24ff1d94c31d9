"""Refusals name the role that is needed (docs/api.md#authentication-and-roles): a 401 (no
token, a malformed header, an unknown or revoked token) says which role the route needs, as a
403 does, on REST and on the control channel; and the refused request changed nothing."""

from __future__ import annotations

import pytest

from tests.integration.service.conftest import ControlPlaneUnderTest


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("POST", "/v1/policies", "experimenter"),
        ("PATCH", "/v1/sessions/s-1/labels", "compliance"),
        ("GET", "/v1/audit/verify", "compliance"),
        ("GET", "/v1/sessions", "viewer"),
        ("GET", "/v1/control", "app"),
    ],
)
@pytest.mark.parametrize(
    ("header", "reason"),
    [(None, "missing_token"), ("Token abc", "malformed_header"), ("Bearer nope", "invalid_token")],
)
async def test_a_401_names_the_role_the_route_needs(
    cp: ControlPlaneUnderTest, method: str, path: str, role: str, header: str | None,
    reason: str,
) -> None:  # fmt: skip
    headers = {} if header is None else {"Authorization": header}
    body = {"id": "p", "set": {"prompt": "x"}} if method == "POST" else None
    if method == "PATCH":
        body = {"labels": {"k": "v"}}
    async with cp.http.request(method, cp.base + path, json=body, headers=headers) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        error = (await r.json())["error"]
    assert error["code"] == "unauthorized"
    assert error["details"] == {"reason": reason, "required_role": role}
    assert f"requires a token of role {role} or higher" in error["message"]
    assert (await cp.call("GET", "/v1/policies", expect=200))["items"] == []

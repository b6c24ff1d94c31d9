"""Happy paths of the routes over a real server: shapes, query handling, CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.unit.api.fake_service import TOKENS, FakeControlPlane, serve_fake

Client = TestClient[web.Request, web.Application]
VIEWER = {"Authorization": f"Bearer {TOKENS['viewer']}"}
ADMIN = {"Authorization": f"Bearer {TOKENS['admin']}"}


@pytest.fixture
def fake() -> FakeControlPlane:
    return FakeControlPlane()


@pytest.fixture
async def client(fake: FakeControlPlane) -> AsyncIterator[Client]:
    c = await serve_fake(fake)
    yield c
    await c.close()


async def test_list_sessions_passes_parsed_selector_and_paginates(
    client: Client, fake: FakeControlPlane
) -> None:
    resp = await client.get(
        "/v1/sessions",
        params=[
            ("selector", "region in (eu-west-1,eu-central-1)"),
            ("kind", "streaming-v3"),
            ("limit", "2"),
        ],
        headers=VIEWER,
    )
    body = await resp.json()
    assert resp.status == 200
    assert [s["id"] for s in body["items"]] == ["s-1", "s-2"]
    assert body["next"] == "2"
    assert fake.calls[-1] == (
        "list_sessions",
        {"region": ["eu-west-1", "eu-central-1"]},
        "streaming-v3",
        None,
        2,
        None,
    )
    resp = await client.get(
        "/v1/sessions",
        params=[
            ("selector", "region in (eu-west-1,eu-central-1)"),
            ("limit", "2"),
            ("cursor", body["next"]),
        ],
        headers=VIEWER,
    )
    body = await resp.json()
    assert [s["id"] for s in body["items"]] == ["s-4"]
    assert body["next"] is None


async def test_list_sessions_defaults(client: Client, fake: FakeControlPlane) -> None:
    resp = await client.get("/v1/sessions", headers=VIEWER)
    assert resp.status == 200
    assert fake.calls[-1] == ("list_sessions", None, None, None, 100, None)
    assert len((await resp.json())["items"]) == 4


async def test_relabel_passes_actor_and_labels(client: Client, fake: FakeControlPlane) -> None:
    resp = await client.patch(
        "/v1/sessions/s-1/labels",
        json={"labels": {"tier": "gold", "tenant": None}},
        headers={"Authorization": f"Bearer {TOKENS['compliance']}"},
    )
    assert resp.status == 200
    assert (await resp.json())["labels"] == {"region": "eu-west-1", "tier": "gold"}
    name, sid, labels, actor = fake.calls[0]
    assert (name, sid, labels) == ("relabel_session", "s-1", {"tier": "gold", "tenant": None})
    assert actor.startswith("compliance:")


async def test_session_log_and_policy_lists_are_items(client: Client) -> None:
    for path in ("/v1/sessions/s-1/log", "/v1/policies", "/v1/policies/eu-disclosure/versions"):
        resp = await client.get(path, headers=VIEWER)
        body = await resp.json()
        assert resp.status == 200, body
        assert set(body) == {"items", "next"} and body["next"] is None
        assert body["items"]


async def test_include_retired(client: Client, fake: FakeControlPlane) -> None:
    fake.retired.add("eu-disclosure")
    resp = await client.get("/v1/policies", headers=VIEWER)
    assert (await resp.json())["items"] == []
    resp = await client.get("/v1/policies?include_retired=true", headers=VIEWER)
    assert [p["status"] for p in (await resp.json())["items"]] == ["retired"]


async def test_assignments_json_by_default(client: Client) -> None:
    resp = await client.get("/v1/experiments/upsell-q4/assignments", headers=VIEWER)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert len((await resp.json())["items"]) == 2


@pytest.mark.parametrize(
    ("query", "accept"), [("?format=csv", "application/json"), ("", "text/csv;q=0.9, */*")]
)
async def test_assignments_csv(client: Client, query: str, accept: str) -> None:
    resp = await client.get(
        f"/v1/experiments/upsell-q4/assignments{query}", headers={**VIEWER, "Accept": accept}
    )
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    assert resp.charset == "utf-8"
    assert 'filename="assignments-upsell-q4.csv"' in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert [r["session_id"] for r in rows] == ["s-1", "s-4"]
    assert rows[1]["variant"] == "enterprise, pitch"
    assert rows[1]["bucket_value"] == "+15550001"
    assert rows[1]["weight"] == "50"


async def test_assignments_unknown_experiment_is_404(client: Client) -> None:
    resp = await client.get("/v1/experiments/nope/assignments?format=csv", headers=VIEWER)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_audit_verify_reports_and_ok_flag(client: Client, fake: FakeControlPlane) -> None:
    resp = await client.get("/v1/audit/verify?session=s-2", headers=ADMIN)
    body = await resp.json()
    assert body["ok"] is True and [r["session_id"] for r in body["items"]] == ["s-2"]
    fake.broken_sessions.add("s-3")
    resp = await client.get("/v1/audit/verify", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 200
    assert body["ok"] is False
    bad = [r for r in body["items"] if not r["ok"]]
    assert bad == [
        {
            "session_id": "s-3",
            "ok": False,
            "count": 2,
            "first_bad_seq": 2,
            "problem": "hash mismatch",
        }
    ]


async def test_rollout_retire_and_rollback(client: Client) -> None:
    resp = await client.get("/v1/policies/eu-disclosure/rollout", headers=VIEWER)
    assert (await resp.json())["totals"]["targeted"] == 3
    resp = await client.post("/v1/policies/eu-disclosure/rollback", json={"to": 1}, headers=ADMIN)
    assert (await resp.json())["version"] == 3
    resp = await client.delete("/v1/policies/eu-disclosure", headers=ADMIN)
    assert resp.status == 200
    resp = await client.post("/v1/policies/eu-disclosure/rollback", json={"to": 9}, headers=ADMIN)
    assert resp.status == 404


async def test_path_ids_are_percent_decoded(client: Client, fake: FakeControlPlane) -> None:
    fake.sessions["a:b@c"] = {**fake.sessions["s-1"], "id": "a:b@c"}
    resp = await client.get("/v1/sessions/a%3Ab%40c", headers=VIEWER)
    assert resp.status == 200
    assert (await resp.json())["id"] == "a:b@c"

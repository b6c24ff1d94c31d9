"""Signed policy events on a real nats-server: with a key, replicas sign what they publish and
apply only validly signed events; unsigned, wrong-key, tampered and replayed events are acked,
counted, logged without secrets and change nothing. Without a key everything is as before.
The key never reaches a log (DEBUG), an audit entry, the metrics or an API response."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import aiohttp

from controlplane.edges.client import ControlClient, ServerPush
from controlplane.signing import SIGNATURE_HEADER, SigningKeys, signature
from tests.integration.distributed.conftest import Cluster, Replica, event
from tests.integration.distributed.harness import publish_signed, spawn, stream_events
from tests.integration.service.conftest import ADMIN, eventually

KEY = "key-one-" + secrets.token_hex(16)
NEW = "key-two-" + secrets.token_hex(16)
WRONG = "key-bad-" + secrets.token_hex(16)


def _body(policy_id: str, version: int, prompt: str, priority: int = 500) -> bytes:
    """A raw event; its priority (above REST's default 100) makes it win ``system_prompt``."""
    doc = event({"id": policy_id, "version": version, "priority": priority,
                 "set": {"system_prompt": prompt}})  # fmt: skip
    return json.dumps(doc).encode()


async def _next(pushes: Any, timeout: float = 5.0) -> ServerPush:
    return await asyncio.wait_for(anext(pushes), timeout)


async def _nothing_more(pushes: Any) -> None:
    try:
        extra = await asyncio.wait_for(anext(pushes), 0.7)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected push {extra}")


async def _expect(clients: list[tuple[ControlClient, Any]], prompt: str) -> None:
    for client, pushes in clients:
        push = await _next(pushes)
        assert push.message["session"] == {"system_prompt": prompt}
        await client.applied(push.version)


async def test_signed_events_apply_and_unsigned_forged_tampered_or_replayed_ones_change_nothing(
    cluster: Cluster, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    # a key rotation in progress: A still signs with KEY, B already with NEW; both accept both
    a = await cluster.start("node-a", policy_signing_key=SigningKeys.parse(f"{KEY},{NEW}"))
    b = await cluster.start("node-b", policy_signing_key=SigningKeys.parse(f"{NEW}\n{KEY}"))
    async with a.client() as on_a, b.client() as on_b:
        clients = [(on_a, on_a.pushes()), (on_b, on_b.pushes())]
        await a.publish({"id": "tone", "set": {"system_prompt": "tone v1"}})
        await _expect(clients, "tone v1")
        await b.publish({"id": "tone", "set": {"system_prompt": "tone v2"}})
        await _expect(clients, "tone v2")
        # a raw NATS publisher signing as docs/distributed.md shows
        await publish_signed(cluster, "vip", _body("vip", 1, "vip v1"), msg_id="vip:1", key=KEY)
        await _expect(clients, "vip v1")

        evil = _body("evil", 1, "EVIL", priority=1000)  # it would win if it were applied
        await publish_signed(cluster, "evil", evil, msg_id="evil:1", key=None)  # unsigned
        await publish_signed(cluster, "evil", _body("evil", 2, "EVIL"), msg_id="evil:2", key=WRONG)
        signed = _body("evil", 3, "harmless")  # signed, then the body is changed in transit
        await publish_signed(cluster, "evil", _body("evil", 3, "EVIL"), msg_id="evil:3", key=KEY,
                             signed_body=signed)  # fmt: skip
        # a body signed for one Nats-Msg-Id replayed under another (past the dedupe window)
        await publish_signed(cluster, "evil", _body("evil", 4, "EVIL"), msg_id="evil:4-again",
                             key=NEW, signed_msg_id="evil:4")  # fmt: skip
        # an unsigned event with a huge version on a real policy's subject
        await publish_signed(cluster, "tone", _body("tone", 99, "EVIL"), msg_id="tone:99", key=None)
        # the consumer goes on: the next signed event applies
        await publish_signed(cluster, "vip", _body("vip", 2, "vip v2"), msg_id="vip:2", key=NEW)
        await _expect(clients, "vip v2")
        # the forged v99 is not trusted when the next version is assigned
        published = await a.publish({"id": "tone", "priority": 900,
                                     "set": {"system_prompt": "tone v3"}})  # fmt: skip
        assert published["version"] == 3
        await _expect(clients, "tone v3")
        for _, pushes in clients:
            await _nothing_more(pushes)

    for replica in (a, b):
        assert await replica.metric("controlplane_policy_events_total", result="unsigned") == 2
        assert await replica.metric(
            "controlplane_policy_events_total", type="policy.published", result="bad_signature"
        ) == 3  # fmt: skip
        assert await replica.metric("controlplane_policy_events_total", result="applied") == 5
        await replica.call("GET", "/v1/policies/evil", expect=404)
        versions = await replica.call("GET", "/v1/policies/tone/versions", expect=200)
        assert [v["version"] for v in versions["items"]] == [1, 2, 3]

    # what the replicas stored carries the signature of the replica that published it
    stored = {m.headers.get("Nats-Msg-Id"): m for m in
              await stream_events(cluster.nats_url, cluster.policy_stream)}  # fmt: skip
    for msg_id, key in (("tone:1", KEY), ("tone:2", NEW), ("tone:3", KEY)):
        m = stored[msg_id]
        assert m.headers[SIGNATURE_HEADER] == signature(key.encode(), msg_id, m.data)

    text = caplog.text
    assert "(Nats-Msg-Id 'evil:1') refused: no Cp-Signature header" in text
    assert "(Nats-Msg-Id 'evil:4-again') refused: Cp-Signature does not match" in text
    assert f"{cluster.subject_prefix}.policy.evil" in text
    signatures = [m.headers[SIGNATURE_HEADER] for m in stored.values() if SIGNATURE_HEADER in
                  m.headers]  # fmt: skip
    for secret in (KEY, NEW, WRONG, *(s.removeprefix("v1=") for s in signatures)):
        assert secret not in text


async def test_without_a_key_events_apply_signed_or_not_as_before(cluster: Cluster) -> None:
    a = await cluster.start("node-a")
    async with a.client() as app:
        clients = [(app, app.pushes())]
        await a.publish({"id": "tone", "set": {"system_prompt": "rest"}})
        await _expect(clients, "rest")
        await publish_signed(cluster, "raw", _body("raw", 1, "unsigned"), msg_id="raw:1", key=None)
        await _expect(clients, "unsigned")
        await publish_signed(cluster, "raw", _body("raw", 2, "any sig"), msg_id="raw:2", key=WRONG)
        await _expect(clients, "any sig")
    stored = await stream_events(cluster.nats_url, cluster.policy_stream)
    assert SIGNATURE_HEADER not in stored[0].headers  # REST events are not signed without a key
    assert await a.metric("controlplane_policy_events_total", result="applied") == 3
    assert await a.metric("controlplane_policy_events_total", result="unsigned") == 0


async def _publish_http(http: aiohttp.ClientSession, base: str, doc: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with http.post(base + "/v1/policies", json=doc, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def _metric(http: aiohttp.ClientSession, base: str, name: str, result: str) -> float:
    async with http.get(base + "/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(name + "{") and f'result="{result}"' in line
    )


async def test_serve_reads_the_key_file_flag_reloads_it_on_change_and_never_prints_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    key_file = tmp_path / "policy-signing-key"
    key_file.write_text(KEY + "\n")
    proc = await asyncio.to_thread(spawn, cluster, "node-p", "--policy-signing-key-file",
                                   str(key_file))  # fmt: skip
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    http = cluster.http
    try:
        await _publish_http(http, proc.base, {"id": "tone", "set": {"system_prompt": "one"}})
        await publish_signed(cluster, "raw", _body("raw", 1, "EVIL"), msg_id="raw:1", key=None)
        await publish_signed(cluster, "raw", _body("raw", 2, "ok"), msg_id="raw:2", key=KEY)

        async def counted() -> bool:
            unsigned = await _metric(http, proc.base, "controlplane_policy_events_total",
                                     "unsigned")  # fmt: skip
            applied = await _metric(http, proc.base, "controlplane_policy_events_total", "applied")
            return unsigned == 1 and applied == 2

        await eventually(counted, timeout=10)
        # rotate without a restart: the new key first (signs), the old one still accepted
        staged = tmp_path / "staged"
        staged.write_text(f"{NEW}\n{KEY}\n")
        staged.replace(key_file)
        await _publish_http(http, proc.base, {"id": "tone", "set": {"system_prompt": "two"}})
        await publish_signed(cluster, "raw", _body("raw", 3, "old key"), msg_id="raw:3", key=KEY)

        async def applied_all() -> bool:
            return await _metric(http, proc.base, "controlplane_policy_events_total",
                                 "applied") == 4  # fmt: skip

        await eventually(applied_all, timeout=10)
        stored = {m.headers["Nats-Msg-Id"]: m for m in
                  await stream_events(cluster.nats_url, cluster.policy_stream)}  # fmt: skip
        for msg_id, key in (("tone:1", KEY), ("tone:2", NEW)):
            m = stored[msg_id]
            assert m.headers[SIGNATURE_HEADER] == signature(key.encode(), msg_id, m.data)
    finally:
        await asyncio.to_thread(proc.stop)
    log = proc.log()
    assert "refused: no Cp-Signature header" in log
    assert "key(s) loaded from" in log
    assert KEY not in log and NEW not in log


def _fragments(secret: str, size: int = 16) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


async def test_the_signing_key_never_reaches_logs_audit_entries_metrics_or_responses(
    cluster: Cluster, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger of the process
    keys = SigningKeys.parse(f"{KEY},{NEW}")
    a = await cluster.start("node-a", policy_signing_key=keys)
    seen: list[str] = []

    async def call(replica: Replica, method: str, path: str, **kw: Any) -> Any:
        body = await replica.call(method, path, **kw)
        seen.append(json.dumps(body) if not isinstance(body, str) else body)
        return body

    async with a.client(labels={"tier": "gold"}) as app:
        pushes = app.pushes()
        await call(a, "POST", "/v1/policies", body={"id": "tone", "set": {"system_prompt": "a"}},
                   expect=201)  # fmt: skip
        await app.applied((await _next(pushes)).version)
        await call(a, "POST", "/v1/policies", body={"id": "tone", "set": {"system_prompt": "b"}},
                   expect=201)  # fmt: skip
        await app.applied((await _next(pushes)).version)
        await call(a, "POST", "/v1/policies/tone/rollback", body={"to": 1}, expect=200)
        await app.applied((await _next(pushes)).version)
        await publish_signed(cluster, "raw", _body("raw", 1, "EVIL"), msg_id="raw:1", key=WRONG)
        await publish_signed(cluster, "raw", _body("raw", 2, "EVIL"), msg_id="raw:2", key=None)
        await publish_signed(cluster, "raw", _body("raw", 3, "ok"), msg_id="raw:3", key=NEW)
        await app.applied((await _next(pushes)).version)
        await call(a, "DELETE", "/v1/policies/raw", expect=200)
        await app.applied((await _next(pushes)).version)
        sid = app.session_id
        for path in ("/v1/policies?include_retired=true", "/v1/policies/tone",
                     "/v1/policies/tone/versions", "/v1/policies/tone/rollout", "/v1/sessions",
                     f"/v1/sessions/{sid}", f"/v1/sessions/{sid}/log", "/v1/audit/verify",
                     "/openapi.json"):  # fmt: skip
            await call(a, "GET", path, expect=200)
        await call(a, "GET", "/readyz", token=None, expect=200)
        await call(a, "GET", "/v1/policies/raw/versions", expect=200)
        metrics = await call(a, "GET", "/metrics", token=None, expect=200)
        assert 'result="bad_signature"' in metrics and 'result="unsigned"' in metrics

    await a.service.versionlog.flush()
    audit_files = [p.read_text() for p in sorted((a.data_dir / "audit").glob("*.jsonl"))]
    assert audit_files and any("system_prompt" in text for text in audit_files)
    entries = [e for text in audit_files for e in map(json.loads, text.splitlines())
               if "session_id" in e]  # fmt: skip

    async def shipped() -> list[str]:
        stored = await stream_events(cluster.nats_url, cluster.audit_stream)
        rows = [r for m in stored for r in m.rows]  # batches decoded (audit.batches)
        count = sum(1 for r in rows if "session_id" in r)
        return [json.dumps(r) for r in rows] if count >= len(entries) else []

    durable = await eventually(shipped, timeout=10)
    settings = a.settings
    assert settings is not None
    places = {
        "logs": caplog.text,
        "responses": "\n".join(seen),
        "audit files": "\n".join(audit_files),
        "CP_AUDIT": "\n".join(durable),
        "settings": repr(settings) + str(settings),
    }
    for where, text in places.items():
        for secret in (KEY, NEW):
            for fragment in _fragments(secret):
                assert fragment not in text, f"part of a signing key in the {where}"


async def test_events_stored_before_signing_was_turned_on_apply_up_to_the_given_sequence(
    cluster: Cluster,
) -> None:
    before = await cluster.start("node-before")  # no key yet: creates the stream
    for version in (1, 2):
        await publish_signed(cluster, "old", _body("old", version, f"old v{version}"),
                             msg_id=f"old:{version}", key=None)  # fmt: skip
    keys = SigningKeys.parse(KEY)
    strict = await cluster.start("node-strict", policy_signing_key=keys)
    migrated = await cluster.start("node-migrated", policy_signing_key=keys,
                                   policy_unsigned_through_seq=2)  # fmt: skip
    await publish_signed(cluster, "old", _body("old", 3, "EVIL"), msg_id="old:3", key=None)
    await publish_signed(cluster, "new", _body("new", 1, "signed"), msg_id="new:1", key=KEY)

    async def settled() -> bool:
        counts = [await r.metric("controlplane_policy_events_total", result="unsigned")
                  for r in (strict, migrated)]  # fmt: skip
        # "new" is on another subject: its delivery may trail old:3's refusal; and the
        # replica without a key applies old:3 on its own cadence (nothing above waited for it)
        applied = [r.service.store.current_version("new") for r in (strict, migrated)]
        unkeyed = before.service.store.current_version("old")
        return counts == [3, 1] and applied == [1, 1] and unkeyed == 3

    await eventually(settled)
    assert (await migrated.call("GET", "/v1/policies/old", expect=200))["version"] == 2
    await strict.call("GET", "/v1/policies/old", expect=404)  # its history predates the key
    for replica in (strict, migrated):
        assert (await replica.call("GET", "/v1/policies/new", expect=200))["version"] == 1
    assert (await before.call("GET", "/v1/policies/old", expect=200))["version"] == 3

"""Owner requests between replicas (``<prefix>.node.<node>.<action>``: relabel, log) on a real
NATS + Redis cluster. With a policy signing key, NATS publish rights alone no longer relabel a
session (a relabel moves a session in or out of a compliance policy's ``match``): a request
must be signed by the key, for that subject, and be fresh. Unsigned, wrong-key, re-addressed,
stale, tampered and replayed requests are refused with 403 and change nothing; the replicas' own
requests (``PATCH`` on one replica for a session on the other) still work. Without a key the
subjects are the authority, as docs/distributed.md says (tested by test_cluster.py).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

from controlplane.signing import SIGNATURE_HEADER, SigningKeys, signature
from tests.integration.distributed.conftest import Cluster, cluster  # noqa: F401
from tests.integration.service.conftest import eventually

KEY = "rpc-key-" + secrets.token_hex(16)
WRONG = "rpc-bad-" + secrets.token_hex(16)
VIP = {"id": "vip", "match": {"labels": {"tier": "vip"}}, "set": {"system_prompt": "VIP"}}


async def _ask(
    c: Cluster, node: str, action: str, payload: dict[str, Any], *, key: str | None,
    signed_subject: str | None = None, signed_body: bytes | None = None,
) -> dict[str, Any]:  # fmt: skip
    subject = f"{c.subject_prefix}.node.{node}.{action}"
    body = json.dumps(payload).encode()
    headers = None
    if key is not None:
        mac = signature(key.encode(), signed_subject or subject, signed_body or body)
        headers = {SIGNATURE_HEADER: mac}
    nc = await c.nats()
    try:
        msg = await nc.request(subject, body, timeout=5, headers=headers)
    finally:
        await nc.close()
    return dict(json.loads(msg.data))


async def test_with_a_signing_key_only_signed_fresh_owner_requests_relabel_a_session(
    cluster: Cluster,  # noqa: F811
    caplog: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = SigningKeys.parse(KEY)
    a = await cluster.start("node-a", policy_signing_key=keys)
    b = await cluster.start("node-b", policy_signing_key=keys)
    await a.publish(VIP)
    async with b.client(labels={"tier": "basic"}) as app:
        sid = app.session_id
        assert sid is not None
        now = time.time()
        relabel = {"session_id": sid, "labels": {"tier": "vip"}, "actor": "admin:000000"}
        forged = [
            ("unsigned", {**relabel, "sent_at": now}, {"key": None}),
            ("wrong key", {**relabel, "sent_at": now}, {"key": WRONG}),
            ("no time", relabel, {"key": KEY}),
            ("stale", {**relabel, "sent_at": now - 3600}, {"key": KEY}),
            # signed for node-a's subject, sent to node-b
            ("re-addressed", {**relabel, "sent_at": now},
             {"key": KEY, "signed_subject": f"{cluster.subject_prefix}.node.node-a.relabel"}),
            ("tampered", {**relabel, "sent_at": now},
             {"key": KEY, "signed_body": json.dumps({**relabel, "labels": {"tier": "basic"},
                                                     "sent_at": now}).encode()}),
        ]  # fmt: skip
        for name, payload, how in forged:
            reply = await _ask(cluster, "node-b", "relabel", payload, **how)
            assert reply.get("error", {}).get("status") == 403, (name, reply)
            assert reply["error"]["code"] == "forbidden", name
            assert b.service.engine.live[sid].session.labels == {"tier": "basic"}, name
        # signed by a key holder, but labels the REST API would refuse
        for bad in ({"tier": 5}, {"tier": "x" * 300}, {"bad key": "v"}, {}, ["tier"]):
            reply = await _ask(
                cluster,
                "node-b",
                "relabel",
                {**relabel, "labels": bad, "sent_at": time.time()},
                key=KEY,
            )
            assert reply.get("error", {}).get("status") == 400, (bad, reply)
            assert b.service.engine.live[sid].session.labels == {"tier": "basic"}
        log_reply = await _ask(cluster, "node-b", "log", {"session_id": sid}, key=None)
        assert log_reply["error"]["status"] == 403
        assert (await b.session(sid))["effective_config"].get("system_prompt") is None

        # the replicas' own owner request: PATCH on A for B's session, signed by A
        body = await a.call("PATCH", f"/v1/sessions/{sid}/labels",
                            body={"labels": {"tier": "vip"}}, expect=200)  # fmt: skip
        assert body["node"] == "node-b" and body["labels"] == {"tier": "vip"}

        async def vip_prompt() -> bool:
            session = await b.session(sid)
            return bool(session["effective_config"].get("system_prompt") == "VIP")

        await eventually(vip_prompt)
        assert len(await a.log(sid)) >= 1  # the log read through A (signed) works too

        # a key holder's valid request runs once; the same bytes again are a replay
        gold = {**relabel, "labels": {"tier": "gold"}, "sent_at": time.time(), "nonce": "n1"}
        assert (await _ask(cluster, "node-b", "relabel", gold, key=KEY))["result"]["labels"] == {
            "tier": "gold"}  # fmt: skip
        await a.call("PATCH", f"/v1/sessions/{sid}/labels", body={"labels": {"tier": "vip"}},
                     expect=200)  # fmt: skip
        replay = await _ask(cluster, "node-b", "relabel", gold, key=KEY)
        assert replay["error"]["status"] == 403 and "replay" in replay["error"]["message"]
        assert b.service.engine.live[sid].session.labels == {"tier": "vip"}
    text = caplog.text
    assert "owner request" in text and "refused" in text
    for secret in (KEY, WRONG):
        assert secret not in text


async def test_with_a_signing_key_a_forged_reply_to_an_owner_request_is_ignored(
    cluster: Cluster,  # noqa: F811
    caplog: Any,
) -> None:
    """A NATS user that sees owner requests (subscribe rights on ``<prefix>.node.>``) answers
    node-a's log request for node-b's session first, with a forged log: node-a takes the reply
    signed by a replica's key (node-b's, the real log) and ignores the forgery."""
    keys = SigningKeys.parse(KEY)
    a = await cluster.start("node-a", policy_signing_key=keys)
    b = await cluster.start("node-b", policy_signing_key=keys)
    forged = [{"seq": 1, "session_id": "forged", "status": "acked", "cause": "forged"}]
    impostor = await cluster.nats()
    answered: list[str] = []

    async def answer_first(msg: Any) -> None:
        answered.append(msg.subject)
        await impostor.publish(msg.reply, json.dumps({"result": forged}).encode())

    await impostor.subscribe(f"{cluster.subject_prefix}.node.node-b.log", cb=answer_first)
    try:
        async with b.client(labels={"tier": "basic"}) as app:
            sid = app.session_id
            assert sid is not None
            entries = await a.log(sid)  # read through node-a: an owner request to node-b
            assert answered  # the impostor saw the request and answered
            assert entries and all(e.get("session_id") == sid for e in entries), entries
            assert entries == await b.log(sid)
    finally:
        await impostor.close()
    assert "not signed by a replica's key" in caplog.text


async def test_a_captured_owner_request_replayed_after_the_replica_restarts_is_refused(
    cluster: Cluster,  # noqa: F811
) -> None:
    """A NATS user that sees owner requests captures node-a's signed relabel of node-b's
    session; node-b restarts (its in-memory replay window is gone) and the app registers its
    session id again there; the captured bytes, replayed within their 60 s, are refused
    (the seen mark is in Redis) and change nothing."""
    keys = SigningKeys.parse(KEY)
    a = await cluster.start("node-a", policy_signing_key=keys)
    b = await cluster.start("node-b", policy_signing_key=keys)
    spy = await cluster.nats()
    captured: list[tuple[str, bytes, dict[str, str]]] = []

    async def capture(msg: Any) -> None:
        captured.append((msg.subject, msg.data, dict(msg.headers or {})))

    await spy.subscribe(f"{cluster.subject_prefix}.node.node-b.relabel", cb=capture)
    try:
        async with b.client(labels={"tier": "basic"}) as app:
            sid = app.session_id
            assert sid is not None
            await a.call("PATCH", f"/v1/sessions/{sid}/labels",
                         body={"labels": {"tier": "vip"}}, expect=200)  # fmt: skip
            await eventually(lambda: len(captured) == 1)
        await b.stop()
        b = await cluster.start("node-b", policy_signing_key=keys)
        async with b.client(session_id=sid, labels={"tier": "basic"}) as again:
            assert again.session_id == sid
            subject, data, headers = captured[0]
            msg = await spy.request(subject, data, timeout=5, headers=headers)
            reply = json.loads(msg.data)
            assert reply.get("error", {}).get("status") == 403, reply
            assert "replay" in reply["error"]["message"]
            assert b.service.engine.live[sid].session.labels == {"tier": "basic"}
            # the replicas' own requests still work after the restart
            body = await a.call("PATCH", f"/v1/sessions/{sid}/labels",
                                body={"labels": {"tier": "gold"}}, expect=200)  # fmt: skip
            assert body["labels"] == {"tier": "gold"}
    finally:
        await spy.close()

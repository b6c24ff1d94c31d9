"""schemathesis against the served ``/openapi.json`` of a running control plane (admin token).

Every operation of the document is fuzzed with schema-valid (positive) and schema-invalid
(negative) requests under every check schemathesis has (``--checks all``): no 5xx; status
code, content type, headers and body as the document says; schema-invalid input refused with
a 4xx; schema-valid input accepted (the document is exactly as strict as the server: the one
exception is a 422 for a policy document's cross-field rules, which JSON Schema cannot state
and the document lists under ``x-cross-field-rules``); wrong methods answered 405 with
``Allow``; auth not ignored. A few sessions, a policy and an experiment exist so that lookups
also hit real objects.

The server runs in a background thread with its own event loop: schemathesis' transport is
synchronous (``requests``). Bounded: ``EXAMPLES`` per operation and mode.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as REGISTRY
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from controlplane.api.inputs import MAX_BODY_BYTES
from controlplane.api.openapi import openapi_document
from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from tests.integration.service.conftest import ADMIN, TOKENS, _serve

EXAMPLES = 20
SCHEMA = schemathesis.openapi.from_dict(openapi_document())
OPERATIONS = sorted(op.ok().label for op in SCHEMA.get_all_operations())
CROSS_FIELD_RULES = frozenset(
    openapi_document()["components"]["schemas"]["PolicyDocument"]["x-cross-field-rules"]
)
POLICY_BODY_OPERATIONS = frozenset({"publish_policy", "preview_policy"})
# an endless event stream: a valid request never ends (tests/integration/service/
# test_rollout_stream.py covers it); only its refusals are fuzzed
ENDLESS = frozenset({"GET /v1/policies/{policy_id}/rollout/stream"})


def _oversize(response: Any) -> bool:
    """A 413 for a body over the documented byte limit (JSON Schema counts no bytes)."""
    body = getattr(response.request, "body", None) or b""
    return response.status_code == 413 and len(body) > MAX_BODY_BYTES


def cross_field_aware_acceptance(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """``positive_data_acceptance``, except a 422 whose every violation is a documented
    cross-field rule of a policy document (weights summing to 100, ...), or a 413 for a body
    over the byte limit."""
    if _oversize(response):
        return None
    if case.operation.definition.raw.get("operationId") in POLICY_BODY_OPERATIONS and (
        response.status_code == 422
    ):
        violations = response.json()["error"]["details"]["violations"]
        if violations and all(v["rule"] in CROSS_FIELD_RULES for v in violations):
            return None
    return positive_data_acceptance(ctx, response, case)


def rejection_incl_oversize(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """``negative_data_rejection``; a 413 for a body over the byte limit is a rejection too."""
    if _oversize(response):
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    *(
        c
        for c in REGISTRY.get_all()
        if c not in (positive_data_acceptance, negative_data_rejection)
    ),
    cross_field_aware_acceptance,
    rejection_incl_oversize,
]
assert len(CHECKS) >= 14, [c.__name__ for c in CHECKS]  # every check schemathesis has
SEEDED_SESSIONS = ("st-1", "st-2")


@dataclass
class LiveServer:
    base: str
    loop: asyncio.AbstractEventLoop


async def _seed(base: str, http: aiohttp.ClientSession) -> list[aiohttp.ClientWebSocketResponse]:
    """Two live control-channel sessions, a published policy with an experiment."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    sockets = []
    for sid in SEEDED_SESSIONS:
        ws = await http.ws_connect(base.replace("http", "ws") + "/v1/control", headers=headers)
        await ws.send_json(
            {
                "type": "register",
                "session_id": sid,
                "kind": "voice-agent-v1",
                "model": "voice-agent",
                "labels": {"tier": "gold"},
            }
        )
        await ws.receive(timeout=5)
        sockets.append(ws)
    doc = {
        "id": "p",
        "set": {"system_prompt": "x"},
        "experiment": {
            "key": "exp",
            "variants": [{"name": "a", "weight": 50}, {"name": "b", "weight": 50}],
        },
    }
    async with http.post(base + "/v1/policies", json=doc, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
    return sockets


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir: Path = tmp_path_factory.mktemp("schemathesis") / "data"
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        settings = Settings(
            listen="127.0.0.1:0",
            data_dir=data_dir,
            node_id="node-s",
            tokens=TOKENS,
            shutdown_grace_s=0.2,
            upstream_streaming_url="ws://127.0.0.1:9/v3/ws",
            upstream_agent_url="ws://127.0.0.1:9/v1/ws",
        )
        app = build_app(settings)
        runner, port = await _serve(app)
        stop = asyncio.Event()
        box["base"] = f"http://127.0.0.1:{port}"
        box["stop"] = stop
        box["loop"] = asyncio.get_running_loop()
        box["service"] = app[SERVICE]
        async with aiohttp.ClientSession() as http:
            sockets = await _seed(box["base"], http)
            ready.set()
            await stop.wait()
            for ws in sockets:
                await ws.close()
        await runner.cleanup()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="schemathesis-server", daemon=True)
    thread.start()
    assert ready.wait(30), "the control plane did not start"
    if "error" in box:
        raise box["error"]
    yield LiveServer(box["base"], box["loop"])
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(30)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]


def test_the_served_document_is_the_one_fuzzed(live_server: LiveServer) -> None:
    served = requests.get(live_server.base + "/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == openapi_document()


def _has_inputs(operation: Any) -> bool:
    return bool(list(operation.iter_parameters())) or bool(list(operation.body))


def _cases() -> list[tuple[str, GenerationMode]]:
    """Every operation positively; negatively only where there is an input to negate."""
    out = []
    for label in OPERATIONS:
        operation = SCHEMA.find_operation_by_label(label)
        assert operation is not None, label
        if label not in ENDLESS:
            out.append((label, GenerationMode.POSITIVE))
        if _has_inputs(operation):
            out.append((label, GenerationMode.NEGATIVE))
    return out


@pytest.mark.parametrize(("label", "mode"), _cases(), ids=str)
def test_operation_conforms_to_its_document(
    live_server: LiveServer, label: str, mode: GenerationMode
) -> None:
    operation = SCHEMA.find_operation_by_label(label)
    assert operation is not None
    checks = CHECKS
    headers = {"Authorization": f"Bearer {ADMIN}"}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), seeded=st.booleans())
    def run(case: schemathesis.Case, seeded: bool) -> None:
        meta = case.meta
        negated = {
            loc for loc in ParameterLocation if meta is not None and meta.is_negative_at(loc)
        }
        if seeded and ParameterLocation.PATH not in negated:
            _use_seeded_ids(case)
        # a negated header is the point of the case (usually a missing Authorization: 401)
        auth = None if ParameterLocation.HEADER in negated else headers
        case.call_and_validate(base_url=live_server.base, headers=auth, checks=checks, timeout=10)

    run()


def _use_seeded_ids(case: schemathesis.Case) -> None:
    """Point the path at objects that exist (random ids are all 404)."""
    params = case.path_parameters
    if not isinstance(params, dict):
        return
    seeded = {"session_id": SEEDED_SESSIONS[0], "policy_id": "p", "key": "exp"}
    for name in params:
        if name in seeded and isinstance(params[name], str):
            params[name] = seeded[name]

"""EngineSessions, the one port the edges report to, over a real PushEngine and an in-memory
version log (no sockets): a client update is one call — the refused part logged, the rest
adopted and logged — and an acknowledgement ends the push in flight."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from controlplane.config import Settings
from controlplane.push.acks import (
    ClientRefusal,
    ClientUpdate,
    PushApplied,
    PushRejected,
    PushUnverified,
)
from controlplane.push.engine import PushEngine
from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push, PushState
from controlplane.push.sending import follow_doubts
from controlplane.service.sessions import EngineSessions
from policies.provenance import PolicyRef
from sessions.clock import FakeClock
from sessions.dialects import dialect_for
from sessions.model import Session
from sessions.registry import MemoryRegistry
from sessions.versionlog.memory import MemoryVersionLog

REF = (PolicyRef("p", 1),)


class _Transport:
    acknowledging = True

    def congested(self) -> bool:
        return False

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        raise AssertionError("nothing is written in these tests")


class _Port:
    def __init__(self) -> None:
        clock = FakeClock()
        self.log = MemoryVersionLog(clock, flush_interval_s=None)
        self.engine = PushEngine(settings=Settings(), clock=clock, versionlog=self.log,
                                 registry=MemoryRegistry(clock))  # fmt: skip
        self.counted: list[tuple[str, str]] = []
        self.port = EngineSessions(self.engine, lambda ls: [], self._count)

    def _count(self, kind: str, reason: str) -> None:
        self.counted.append((kind, reason))

    def session(self, kind: str = "voice-agent-v1") -> LiveSession:
        session = Session(id="s1", kind=kind, model="voice-agent", labels={}, client_config={})
        push = PushState.start(acknowledging=True, config={}, refs=(), version=1)
        ls = LiveSession(session=session, push=push, transport=_Transport(),
                         dialect=dialect_for(kind))  # fmt: skip
        self.engine.attach(ls, self.engine.resolve(session, []))
        return ls

    async def entries(self) -> list[tuple[str, str, Any]]:
        await self.log.flush()
        return [(e.cause, e.status, dict(e.delta)) for e in await self.log.entries("s1")]


@pytest.fixture
async def port() -> AsyncIterator[_Port]:
    made = _Port()
    yield made
    await made.engine.close()


async def test_a_client_update_is_one_trip_refusal_then_adoption_then_its_entry(
    port: _Port,
) -> None:
    ls = port.session()
    wire = {"type": "update", "config": {"prompt": "x", "keyterms": ["a"]}}
    refusal = ClientRefusal({"prompt": "x"}, wire, "prompt locked by policy p v1")
    await port.port.client_update(
        ls, ClientUpdate("sent", {"keyterms": ("a",)}, wire, refusal=refusal)
    )
    assert await port.entries() == [
        ("client", "rejected", {"prompt": "x"}),
        ("client", "sent", {"keyterms": ["a"]}),
    ]
    assert port.counted == [("voice-agent-v1", "locked_field")]
    assert ls.session.client_config == {"keyterms": ("a",)}  # adopted: the upstream runs it
    assert ls.push.base == {"keyterms": ("a",)}


async def test_an_unverified_client_update_is_logged_but_not_adopted(port: _Port) -> None:
    ls = port.session()
    update = ClientUpdate("unverified", {"keyterms": ("a",)}, None, "no answer within 5s")
    await port.port.client_update(ls, update)
    assert await port.entries() == [("client", "unverified", {"keyterms": ["a"]})]
    assert ls.session.client_config == {} and ls.push.base == {}
    # a forwarded update with nothing left that changes anything is not logged
    await port.port.client_update(ls, ClientUpdate("sent", {}, None))
    assert len(await port.entries()) == 1


@pytest.mark.parametrize(("ack", "status"), [
    (PushApplied(), "acked"),
    (PushRejected("invalid_value", "bad", frozenset({"keyterms"})), "rejected"),
    (PushUnverified("no answer matched"), "unverified"),
])  # fmt: skip
async def test_an_acknowledgement_ends_the_push_in_flight(
    port: _Port, ack: Any, status: str
) -> None:
    ls = port.session()
    port.engine.mark_ready(ls)
    ls.push.want({"keyterms": ("k",)}, REF, "policy")
    push = ls.push.take(0.0)
    assert push is not None and ls.push.in_flight is push
    await port.port.acknowledge(ls, ack)
    assert ls.push.in_flight is None
    [*_, last] = await port.entries()
    assert (last[0], last[1]) == ("policy", status)
    assert (ls.push.acked_version == push.version) == (status == "acked")


async def test_an_unanswered_push_leaves_its_fields_in_doubt_until_answered_or_set(
    port: _Port,
) -> None:
    """The session view's ``in_doubt`` follows config-at's doubts: a push ending
    ``unverified`` (no answer confirmed) names its fields; a later applied update settles
    the fields it sets, and only those; a late answer ends its version's doubt."""
    ls = port.session()
    port.engine.mark_ready(ls)
    ls.push.want({"keyterms": ("k",), "prompt": "p"}, REF, "policy")
    push = ls.push.take(0.0)
    assert push is not None
    await port.port.acknowledge(ls, PushUnverified("no answer matched"))
    assert set(ls.session.in_doubt) == {"keyterms", "prompt"}
    assert ls.session.state.value == "unverified"
    assert follow_doubts(ls, doubted=(push.version + 1, {"speak_prompt"}))
    assert follow_doubts(ls, settled={"prompt"})  # (a later acknowledged push set it)
    assert set(ls.session.in_doubt) == {"keyterms", "speak_prompt"}
    assert not follow_doubts(ls, settled={"other"})
    assert follow_doubts(ls, answered=push.version)  # (its late answer)
    assert ls.session.in_doubt == ("speak_prompt",)
    await port.port.client_update(ls, ClientUpdate("acked", {"speak_prompt": "x"}, None))
    assert ls.session.in_doubt == () and ls.doubted == {}

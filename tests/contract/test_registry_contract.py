"""One registry contract, run against every backend: memory and a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from policies.provenance import PolicyRef
from sessions.clock import FakeClock
from sessions.errors import BackendUnavailable, SessionIdTaken, UnknownSession
from sessions.model import Session, SessionState
from sessions.redis_registry import RedisRegistry
from sessions.registry import MemoryRegistry, Registry
from tests.support.servers import free_port

TTL_S = 0.3  # real PX expiry on Redis: short, but far above scheduling noise


@dataclass
class Backend:
    registry: Registry
    clock: FakeClock
    elapse: Callable[[float], Awaitable[None]]  # let heartbeat TTLs run out
    make: Callable[[int], Registry]  # another registry on the same storage (max_ended=n)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    clock = FakeClock()
    extra: list[Registry] = []
    if request.param == "memory":

        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        def make_memory(max_ended: int) -> Registry:
            return MemoryRegistry(clock, ttl_s=TTL_S, max_ended=max_ended)

        registry: Registry = make_memory(10_000)
        yield Backend(registry, clock, advance, make_memory)
        return
    url: str = request.getfixturevalue("redis_url")
    prefix = f"t{uuid.uuid4().hex[:10]}:"  # one namespace per test

    def make_redis(max_ended: int) -> Registry:
        made = RedisRegistry(url, clock, ttl_s=TTL_S, prefix=prefix, max_ended=max_ended)
        extra.append(made)
        return made

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(seconds)

    registry = make_redis(10_000)
    try:
        yield Backend(registry, clock, sleep, make_redis)
    finally:
        for made in extra:
            await made.close()


def session(
    sid: str, *, node: str = "node-a", tenant: str = "acme", kind: str = "streaming-v3"
) -> Session:
    ref = PolicyRef("eu-disclosure", 3, None)
    return Session(
        id=sid,
        kind=kind,
        model="u3-rt-pro",
        labels={"tenant": tenant, "region": "eu-west-1"},
        node=node,
        client_config={"keyterms": ("a", "b")},
        effective_config={"prompt": "p", "keyterms": ("a", "b"), "vad_threshold": 0.5},
        provenance={"prompt": ref},
        applied=(ref,),
        desired_version=1,
        sent_version=1,
        acked_version=0,
        state=SessionState.UNVERIFIED,
        created_at=1000.0,
        updated_at=1000.0,
    )


async def test_register_then_get_returns_an_equal_independent_copy(backend: Backend) -> None:
    reg = backend.registry
    original = session("s1")
    await reg.register(original)
    got = await reg.get("s1")
    assert got == original
    got.labels["tenant"] = "mutated"
    original.labels["tenant"] = "mutated too"
    assert (await reg.get("s1")).labels["tenant"] == "acme"
    assert await reg.owner("s1") == "node-a"


async def test_unknown_ids(backend: Backend) -> None:
    reg = backend.registry
    with pytest.raises(UnknownSession) as info:
        await reg.get("nope")
    assert info.value.session_id == "nope"
    with pytest.raises(UnknownSession):
        await reg.update(session("nope"))
    with pytest.raises(UnknownSession):
        await reg.end("nope", cause="client_closed", at=1.0)
    assert await reg.owner("nope") is None


async def test_update_replaces_the_record(backend: Backend) -> None:
    reg = backend.registry
    await reg.register(session("s1"))
    changed = await reg.get("s1")
    changed.desired_version = 2
    changed.effective_config["prompt"] = "v2"
    changed.state = SessionState.PENDING
    await reg.update(changed)
    assert await reg.get("s1") == changed


async def test_update_cannot_end_or_resurrect(backend: Backend) -> None:
    reg = backend.registry
    await reg.register(session("s1"))
    ending = session("s1")
    ending.state = SessionState.ENDED
    with pytest.raises(ValueError, match="end"):
        await reg.update(ending)
    await reg.end("s1", cause="client_closed", at=2000.0)
    stale = session("s1")
    with pytest.raises(UnknownSession):
        await reg.update(stale)
    assert (await reg.get("s1")).state is SessionState.ENDED


async def test_update_many_in_one_batch_reports_skipped_ids(backend: Backend) -> None:
    reg = backend.registry
    for sid in ("a", "b", "c"):
        await reg.register(session(sid))
    await reg.end("c", cause="client_closed", at=2000.0)
    batch = [session(sid) for sid in ("a", "b", "c", "ghost")]
    for s in batch:
        s.acked_version = 9
    skipped = await reg.update_many(batch)
    assert sorted(skipped) == ["c", "ghost"]
    assert (await reg.get("a")).acked_version == 9
    assert (await reg.get("b")).acked_version == 9
    assert (await reg.get("c")).acked_version == 0  # ended: untouched
    assert await reg.update_many([]) == []


async def test_end_marks_ended_keeps_it_for_inspection_and_is_idempotent(
    backend: Backend,
) -> None:
    reg = backend.registry
    await reg.register(session("s1"))
    ended = await reg.end("s1", cause="client_closed", at=2000.0)
    assert ended.state is SessionState.ENDED
    assert (ended.ended_at, ended.end_cause, ended.updated_at) == (2000.0, "client_closed", 2000.0)
    assert await reg.get("s1") == ended
    assert await reg.owner("s1") is None
    assert (await reg.list()).items == []
    assert [s.id for s in (await reg.list(include_ended=True)).items] == ["s1"]
    again = await reg.end("s1", cause="other", at=3000.0)
    assert again == ended  # first end wins


async def test_register_again_after_end_on_its_node_makes_it_live(backend: Backend) -> None:
    reg = backend.registry
    await reg.register(session("s1"))
    await reg.end("s1", cause="client_closed", at=2000.0)
    await reg.register(session("s1", tenant="other"))  # the node holding the id: allowed
    assert (await reg.get("s1")).state is SessionState.UNVERIFIED
    assert (await reg.get("s1")).labels["tenant"] == "other"
    assert await reg.owner("s1") == "node-a"
    assert [s.id for s in (await reg.list()).items] == ["s1"]


async def test_a_claimed_id_is_refused_live_or_held_by_another_node(backend: Backend) -> None:
    reg = backend.registry
    await reg.register(session("s1"))
    for node in ("node-a", "node-b"):  # live: refused on any node, the record untouched
        with pytest.raises(SessionIdTaken) as info:
            await reg.register(session("s1", node=node, tenant="intruder"))
        assert info.value.session_id == "s1" and info.value.holder == "node-a"
        assert not info.value.retryable
    assert (await reg.get("s1")).labels["tenant"] == "acme"
    await reg.end("s1", cause="client_closed", at=2000.0)
    with pytest.raises(SessionIdTaken):  # ended: node-a still holds its trail
        await reg.register(session("s1", node="node-b"))
    assert (await reg.get("s1")).state is SessionState.ENDED
    assert await reg.owner("s1") is None
    assert await reg.holders(["s1", "nobody"]) == ["node-a", None]


async def test_concurrent_registrations_of_one_id_claim_it_once(backend: Backend) -> None:
    reg = backend.registry
    other = backend.make(10_000) if isinstance(reg, RedisRegistry) else reg
    results = await asyncio.gather(
        *(r.register(session("race", node=f"node-{i}")) for i, r in enumerate([reg, other] * 4)),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1, results
    assert all(isinstance(r, SessionIdTaken) for r in results if r is not None)
    assert await reg.owner("race") == f"node-{winners[0]}"
    assert await other.holders(["race"]) == [f"node-{winners[0]}"]


async def test_register_many_writes_back_a_nodes_own_sessions(backend: Backend) -> None:
    reg = backend.registry
    await reg.register(session("s0", node="node-b"))
    await reg.end("s0", cause="client_closed", at=2000.0)
    await reg.register(session("taken", node="node-a"))
    batch = [session(f"s{i}", node="node-b") for i in range(1203)]  # several batches
    batch.append(session("taken", node="node-b", tenant="intruder"))
    assert await reg.register_many(batch) == ["taken"]  # held by node-a: skipped
    assert await reg.register_many([]) == []
    page = await reg.list(limit=2000)
    assert [s.id for s in page.items] == sorted([s.id for s in batch[:-1]] + ["taken"])
    assert await reg.get("s0") == batch[0]  # an ended id of its own is live again
    assert await reg.owner("s1202") == "node-b"
    assert await reg.owner("taken") == "node-a"
    assert (await reg.get("taken")).labels["tenant"] == "acme"
    assert await reg.register_many([batch[5]]) == []  # a live one of its own: an upsert
    # it counts as a heartbeat: one small batch right after every heartbeat lapsed (Redis
    # expires keys in real time: a 1,203-session batch on a loaded machine can take TTL_S)
    await backend.elapse(TTL_S * 1.3)
    await reg.register_many([session("beat", node="node-c")])
    assert "beat" not in await reg.expire_dead_nodes()


async def test_ended_sessions_are_bounded_oldest_dropped_first(backend: Backend) -> None:
    reg = backend.make(2)
    for i in range(4):
        await reg.register(session(f"s{i}"))
    for i in range(4):
        await reg.end(f"s{i}", cause="client_closed", at=2000.0 + i)
    for dropped in ("s0", "s1"):
        with pytest.raises(UnknownSession):
            await reg.get(dropped)
    assert [s.id for s in (await reg.list(include_ended=True)).items] == ["s2", "s3"]


async def test_find_upstream_indexes_ids_learnt_by_update_until_the_record_is_dropped(
    backend: Backend,
) -> None:
    reg = backend.make(1)
    first = session("s1")
    await reg.register(first)
    assert await reg.find_upstream("up-1") is None  # not known before the upstream said it
    first.upstream_id = "up-1"  # Begin / session.ready arrives after register
    await reg.update(first)
    second = session("s2")
    second.upstream_id = "up-2"
    await reg.register(second)
    assert await reg.find_upstream("up-1") == "s1"
    assert await reg.find_upstream("up-2") == "s2"
    await reg.end("s1", cause="client_closed", at=2000.0)
    assert await reg.find_upstream("up-1") == "s1"  # ended sessions stay findable ...
    await reg.end("s2", cause="client_closed", at=2001.0)
    assert await reg.find_upstream("up-1") is None  # ... until their record is dropped
    assert await reg.find_upstream("up-2") == "s2"


async def test_list_pages_in_id_order_with_a_cursor(backend: Backend) -> None:
    reg = backend.registry
    ids = [f"s{i:02d}" for i in range(25)]
    for sid in reversed(ids):
        await reg.register(session(sid))
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await reg.list(limit=10, cursor=cursor)
        pages += 1
        seen += [s.id for s in page.items]
        if page.next is None:
            break
        cursor = page.next
    assert seen == ids
    assert pages == 3
    exact = await reg.list(limit=25)
    assert len(exact.items) == 25 and exact.next is None  # no empty trailing page


async def test_list_with_predicate_and_ended(backend: Backend) -> None:
    reg = backend.registry
    for i in range(30):
        await reg.register(session(f"s{i:02d}", tenant="acme" if i % 3 == 0 else "other"))
    await reg.end("s03", cause="client_closed", at=2000.0)

    def acme(s: Session) -> bool:
        return s.labels["tenant"] == "acme"

    first = await reg.list(acme, limit=4)
    assert [s.id for s in first.items] == ["s00", "s06", "s09", "s12"]
    second = await reg.list(acme, limit=4, cursor=first.next)
    assert [s.id for s in second.items] == ["s15", "s18", "s21", "s24"]
    third = await reg.list(acme, limit=4, cursor=second.next)
    assert [s.id for s in third.items] == ["s27"] and third.next is None
    with_ended = await reg.list(acme, include_ended=True, limit=3)
    assert [s.id for s in with_ended.items] == ["s00", "s03", "s06"]
    assert with_ended.items[1].state is SessionState.ENDED
    assert with_ended.to_dict()["next"] == "s06"
    with pytest.raises(ValueError):
        await reg.list(limit=0)


async def test_dead_node_sessions_end_as_node_lost(backend: Backend) -> None:
    reg = backend.registry
    await reg.register(session("a1", node="node-a"))
    await reg.register(session("a2", node="node-a"))
    await reg.register(session("b1", node="node-b"))
    await reg.register(session("moved", node="node-b"))
    await reg.heartbeat("node-c")
    assert await reg.expire_dead_nodes() == []  # everyone is within the TTL

    await backend.elapse(TTL_S * 1.3)  # every heartbeat lapses ...
    await reg.heartbeat("node-b")  # ... and node-b comes back in time
    now = backend.clock.now()
    assert await reg.expire_dead_nodes() == ["a1", "a2"]

    lost = await reg.get("a1")
    assert lost.state is SessionState.ENDED
    assert (lost.end_cause, lost.ended_at) == ("node_lost", now)
    assert await reg.owner("a1") is None
    assert (await reg.get("b1")).state is SessionState.UNVERIFIED
    assert await reg.owner("b1") == "node-b"
    assert (await reg.get("moved")).state is SessionState.UNVERIFIED
    assert await reg.expire_dead_nodes() == []  # nothing left to expire


async def test_register_counts_as_a_heartbeat(backend: Backend) -> None:
    reg = backend.registry
    await backend.elapse(TTL_S * 1.3)
    await reg.register(session("fresh", node="node-z"))
    assert await reg.expire_dead_nodes() == []


# memory storage is private to one registry: only Redis can be shared
@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_a_second_registry_on_the_same_storage_sees_the_same_state(
    backend: Backend,
) -> None:
    await backend.registry.register(session("shared"))
    other = backend.make(10_000)
    assert await other.get("shared") == session("shared")
    await other.end("shared", cause="client_closed", at=5.0)
    assert (await backend.registry.get("shared")).state is SessionState.ENDED


async def test_redis_failures_become_backend_unavailable() -> None:
    reg = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0", FakeClock())
    try:
        with pytest.raises(BackendUnavailable) as info:
            await reg.get("s1")
        assert info.value.retryable
        assert info.value.__cause__ is not None
        with pytest.raises(BackendUnavailable):
            await reg.update_many([session("s1")])
    finally:
        await reg.close()


async def test_a_burst_of_concurrent_registrations_all_land_and_a_duplicate_in_it_is_refused(
    backend: Backend,
) -> None:
    """A reconnect storm (issue #19): 1,200 concurrent registrations, one id twice."""
    reg = backend.registry
    ids = [f"storm-{i}" for i in range(1200)]
    results = await asyncio.gather(
        *(reg.register(session(i)) for i in ids), reg.register(session("storm-7", node="node-b")),
        return_exceptions=True,
    )  # fmt: skip
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], SessionIdTaken), refused[:3]
    assert {s.id for s in (await reg.list(limit=5000)).items} >= set(ids)
    assert (await reg.get("storm-7")).node == "node-a"


async def test_redis_writes_concurrent_registrations_together(redis_url: str) -> None:
    """Group commit: 1,000 concurrent registrations cost a few MULTI/EXECs, not 1,000."""
    from redis.asyncio import Redis  # the test reads Redis's own command counters

    probe = Redis.from_url(redis_url)
    reg = RedisRegistry(redis_url, FakeClock(), prefix=f"t{uuid.uuid4().hex[:10]}:")
    try:
        before = (await probe.info("commandstats")).get("cmdstat_exec", {}).get("calls", 0)
        await asyncio.gather(*(reg.register(session(f"gc-{i}")) for i in range(1000)))
        after = (await probe.info("commandstats")).get("cmdstat_exec", {}).get("calls", 0)
        assert 2 <= after - before <= 20, after - before
        assert len((await reg.list(limit=1000)).items) == 1000
    finally:
        await reg.close()
        await probe.aclose()

"""``audit at`` rebuild rules, pure: rows sealed by the real version log (memory backend)
exactly as the push engine records them, then rebuilt at chosen instants."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from policies.delta import apply
from sessions.audit_trail import config_at_report
from sessions.clock import FakeClock
from sessions.config_at import LATE_ANSWER, config_at
from sessions.errors import NotRebuildable, UnknownSession
from sessions.versionchain import canonical_json
from sessions.versionlog.memory import MemoryVersionLog

T0 = 1_790_000_000.0
EU = {"id": "eu", "version": 1, "variant": None}
EU2 = {"id": "eu", "version": 2, "variant": None}


class Recorder:
    """Appends entries one second apart, as the engine does (config = what the upstream runs
    once the entry takes effect)."""

    def __init__(self) -> None:
        self.clock = FakeClock(T0)
        self.log = MemoryVersionLog(self.clock, flush_interval_s=None)

    def add(self, *, config: dict[str, Any], delta: dict[str, Any] | None = None,
            **kw: Any) -> float:  # fmt: skip
        self.clock.advance(1.0)
        self.log.append("s", delta=delta or {}, config=config, **kw)
        return self.clock.now()

    async def rows(self) -> list[dict[str, Any]]:
        await self.log.flush()
        return self.log.storage["s"]


@pytest.fixture
def rec() -> Iterator[Recorder]:
    yield Recorder()


async def test_streaming_pushes_take_effect_when_sent(rec: Recorder) -> None:
    start: dict[str, Any] = {"keyterms": ["alpha"]}
    t1 = rec.add(version=1, cause="connect", status="sent", config=start)
    pushed = apply(start, {"prompt": "recorded"})
    t2 = rec.add(version=2, cause="policy", status="sent", delta={"prompt": "recorded"},
                 config=pushed, policies=[EU])  # fmt: skip
    rows = await rec.rows()
    assert rows[0]["config"] == start  # the connect entry carries the full config
    assert "config" not in rows[1]

    before = config_at("s", rows, t2 - 0.5)
    assert before.config == start and before.established_by["seq"] == 1
    after = config_at("s", rows, t2 + 100)
    assert after.config == pushed
    assert after.policies == [EU]
    assert after.established_by["seq"] == 2 and after.established_by["hash"] == rows[1]["hash"]
    assert after.status == "pushed; sent, not acknowledged (the protocol has none)"
    assert after.verified and after.checked == 2
    assert config_at("s", rows, t1).config == start


async def test_agent_push_counts_from_its_acknowledgement_and_a_rejection_keeps_the_old(
    rec: Recorder,
) -> None:
    start = {"system_prompt": "kind"}
    rec.add(version=1, cause="connect", status="sent", config=start)
    ready = rec.add(version=1, cause="connect", status="acked", config=start)
    concise = {"system_prompt": "concise"}
    sent = rec.add(version=2, cause="policy", status="sent", delta=concise, config=concise,
                   policies=[EU])  # fmt: skip
    acked = rec.add(version=2, cause="policy", status="acked", delta=concise, config=concise,
                    policies=[EU])  # fmt: skip
    brief = {"system_prompt": "brief"}
    rec.add(version=3, cause="policy", status="sent", delta=brief, config=brief, policies=[EU2])
    rejected = rec.add(version=3, cause="policy", status="rejected", delta=brief, config=brief,
                       policies=[EU2], error="invalid_config: no")  # fmt: skip
    rows = await rec.rows()

    at_ready = config_at("s", rows, ready)
    assert at_ready.config == start
    assert "acknowledged by the upstream (session ready, seq 2)" in at_ready.status
    in_flight = config_at("s", rows, sent + 0.5)
    assert in_flight.config == start  # sent, not yet acknowledged at that instant
    assert in_flight.pending[0]["version"] == 2
    assert in_flight.pending[0]["answer"]["status"] == "acked"
    done = config_at("s", rows, acked)
    assert done.config == concise and done.established_by["seq"] == 4
    assert done.sent_by is not None and done.sent_by["seq"] == 3
    assert done.status == "acknowledged by the upstream (version 2)"
    after = config_at("s", rows, rejected + 5)
    assert after.config == concise and after.policies == [EU]  # the previous config stayed
    assert after.established_by["seq"] == 4
    assert any("version 3 was rejected (invalid_config: no)" in n for n in after.notes)
    assert after.verified and after.checked == 6


async def test_timeouts_apply_reports_client_updates_and_skips(rec: Recorder) -> None:
    base = {"system_prompt": "a"}
    rec.add(version=1, cause="connect", status="sent", config=base)
    b = {"system_prompt": "b"}
    rec.add(version=2, cause="policy", status="sent", delta=b, config=b)
    timeout = rec.add(version=2, cause="policy", status="unverified", delta=b, config=b,
                      error="no acknowledgement within 5s")  # fmt: skip
    c = {"system_prompt": "c"}
    rec.add(version=3, cause="policy", status="sent", delta=c, config=c)
    applied = rec.add(version=3, cause="policy", status="unverified", delta=c, config=c)
    client: dict[str, Any] = {"system_prompt": "c", "keyterms": ["x"]}
    by_client = rec.add(version=3, cause="client", status="sent", delta={"keyterms": ["x"]},
                        config=client)  # fmt: skip
    refused = rec.add(version=3, cause="client", status="rejected", delta={"prompt": "p"},
                      config=client, error="prompt locked by policy eu v1")  # fmt: skip
    skipped_cfg = apply(client, {"vad_threshold": 0.5})
    skipped = rec.add(version=4, cause="policy", status="skipped",
                      delta={"vad_threshold": 0.5}, config=skipped_cfg)  # fmt: skip
    rows = await rec.rows()

    assert config_at("s", rows, timeout).config == base  # unconfirmed: the old one is kept
    assert config_at("s", rows, applied).config == c  # an app applied it (no ack exists)
    assert "applied as the app reported" in config_at("s", rows, applied).status
    assert config_at("s", rows, by_client).config == client
    assert config_at("s", rows, refused).config == client
    last = config_at("s", rows, skipped)
    assert last.config == skipped_cfg and last.status.startswith("skipped: nothing was sent")
    assert last.verified and last.checked == 8


async def test_a_wrong_config_hash_is_a_failed_check_not_a_silent_answer(rec: Recorder) -> None:
    rec.add(version=1, cause="connect", status="sent", config={"prompt": "a"})
    # recorded as the effective config, not the upstream's (how client entries were logged
    # before config_hash followed the push state's base)
    rec.add(version=1, cause="client", status="sent", delta={"prompt": "mine"},
            config={"prompt": "policy"})  # fmt: skip
    rows = await rec.rows()
    found = config_at("s", rows, T0 + 10)
    assert found.config == {"prompt": "mine"}
    assert not found.verified
    assert found.failures == [{"seq": 2, "problem": "seq 2 (client/sent): its config_hash is "
                               "not the hash of the rebuilt config"}]  # fmt: skip


async def test_errors_name_the_problem(rec: Recorder) -> None:
    with pytest.raises(UnknownSession):
        config_at("s", [], T0)
    rec.add(version=1, cause="connect", status="sent", config={})
    rows = await rec.rows()
    with pytest.raises(NotRebuildable, match=r"no configuration at .* its first entry"):
        config_at("s", rows, T0)
    old = [{k: v for k, v in rows[0].items() if k != "config"}]  # a pre-`config` connect
    with pytest.raises(NotRebuildable, match="carries no connect config"):
        config_at("s", old, T0 + 5)


async def test_the_report_adds_chain_and_checkpoint_evidence(rec: Recorder) -> None:
    rec.add(version=1, cause="connect", status="sent", config={"prompt": "a"})
    rows = await rec.rows()
    report = config_at_report("s", rows, [], T0 + 5)
    assert report["verified"] is True
    assert report["chain"]["ok"] is True and report["checkpoint"]["covered"] is False
    edited = [dict(rows[0], config={"prompt": "forged"})]
    report = config_at_report("s", edited, [], T0 + 5)
    assert report["config"] == {"prompt": "forged"}
    assert report["verified"] is False  # the chain catches it, and so does the hash check
    assert report["chain"]["first_bad_seq"] == 1
    assert report["rebuild"]["failures"][0]["seq"] == 1
    assert canonical_json(report)  # JSON-ready


TRIAL = {"id": "trial", "version": 1, "variant": "control"}


async def test_an_unchanged_entry_names_the_policies_of_the_config_in_effect(
    rec: Recorder,
) -> None:
    start = {"system_prompt": "kind"}
    rec.add(version=1, cause="connect", status="sent", config=start)
    rec.add(version=1, cause="connect", status="acked", config=start)
    concise = {"system_prompt": "concise"}
    rec.add(version=2, cause="policy", status="sent", delta=concise, config=concise,
            policies=[EU])  # fmt: skip
    acked = rec.add(version=2, cause="policy", status="acked", delta=concise, config=concise,
                    policies=[EU])  # fmt: skip
    # an experiment's control arm: nothing sent, the versions in effect recorded
    same = rec.add(version=2, cause="policy", status="unchanged", config=concise,
                   policies=[EU, TRIAL])  # fmt: skip
    rows = await rec.rows()

    before = config_at("s", rows, acked + 0.5)
    assert before.policies == [EU] and before.policies_by is None
    after = config_at("s", rows, same + 0.5)
    assert after.config == concise and after.verified and after.checked == 5
    assert after.policies == [EU, TRIAL]
    assert after.policies_by is not None and after.policies_by["seq"] == 5
    assert after.established_by["seq"] == 4  # the config itself came from the ack
    report = config_at_report("s", rows, [], same + 0.5)
    assert report["policies_by"]["status"] == "unchanged" and report["verified"]


async def test_an_unchanged_entry_of_a_version_in_flight_waits_for_its_answer(
    rec: Recorder,
) -> None:
    start = {"system_prompt": "kind"}
    rec.add(version=1, cause="connect", status="sent", config=start)
    concise = {"system_prompt": "concise"}
    rec.add(version=2, cause="policy", status="sent", delta=concise, config=concise,
            policies=[EU])  # fmt: skip
    # a policy that changes nothing while version 2 is in flight: the upstream still runs
    # version 1, so its hash is version 1's config and it names version 2's policies
    named = rec.add(version=2, cause="policy", status="unchanged", config=start,
                    policies=[EU, TRIAL])  # fmt: skip
    acked = rec.add(version=2, cause="policy", status="acked", delta=concise, config=concise,
                    policies=[EU])  # fmt: skip
    rows = await rec.rows()

    during = config_at("s", rows, named + 0.5)
    assert during.config == start and during.policies == [] and during.verified
    assert during.policies_by is None
    later = config_at("s", rows, acked + 0.5)
    assert later.config == concise and later.verified
    # named after version 2 was sent: its policies are version 2's once it is acknowledged
    assert later.policies == [EU, TRIAL]
    assert later.policies_by is not None and later.policies_by["seq"] == 3


async def test_a_voice_agent_connect_refused_or_unconfirmed_is_said_never_acknowledged(
    rec: Recorder,
) -> None:
    start = {"system_prompt": "kind"}
    rec.add(version=1, cause="connect", status="sent", config=start, policies=[EU])
    refused = rec.add(version=1, cause="connect", status="rejected", config=start,
                      policies=[EU], error="invalid_value: voice_focus")  # fmt: skip
    rows = await rec.rows()
    answer = config_at("s", rows, refused + 1)
    assert answer.verified and answer.established_by["seq"] == 1
    assert answer.status.startswith("connect parameters, refused by the upstream (seq 2)")
    assert any("refused the connect (invalid_value: voice_focus)" in n for n in answer.notes)
    assert not answer.pending

    other = Recorder()
    other.add(version=1, cause="connect", status="sent", config=start)
    late = other.add(version=1, cause="connect", status="unverified", config=start,
                     error="no session.ready within 5s")  # fmt: skip
    answer = config_at("s", await other.rows(), late)
    assert answer.verified and "acknowledged" not in answer.status
    assert "did not confirm them (seq 2: no session.ready within 5s)" in answer.status


async def test_doubts_list_what_leaves_the_running_config_unknown_until_an_answer_resolves_it(
    rec: Recorder,
) -> None:
    """An ack timeout (``unverified`` with an error) and an ``upstream`` doubt put the answer
    in doubt (``doubts``: the config is the record's, not proof it ran); a late answer of the
    timed-out version resolves its doubt; an ``upstream`` doubt stays."""
    base = {"system_prompt": "a"}
    rec.add(version=1, cause="connect", status="sent", config=base)
    b = {"system_prompt": "b"}
    rec.add(version=2, cause="policy", status="sent", delta=b, config=b)
    timeout = rec.add(version=2, cause="policy", status="unverified", delta=b, config=base,
                      error="no acknowledgement within 5s")  # fmt: skip
    late = rec.add(version=2, cause="policy", status="acked", delta=b, config=b,
                   error=LATE_ANSWER + ": session.updated")  # fmt: skip
    warned = rec.add(version=2, cause="upstream", status="unverified", config=b,
                     error="the upstream's Warning 3010: 'not now'")  # fmt: skip
    rows = await rec.rows()

    assert config_at("s", rows, timeout - 0.5).to_dict()["in_doubt"] is False
    doubted = config_at("s", rows, timeout).to_dict()
    assert doubted["in_doubt"] is True and doubted["config"] == base
    assert [(d["seq"], d["cause"], d["status"]) for d in doubted["doubts"]] == [
        (3, "policy", "unverified")
    ]
    resolved = config_at("s", rows, late).to_dict()
    assert (resolved["in_doubt"], resolved["doubts"], resolved["config"]) == (False, [], b)
    after = config_at("s", rows, warned).to_dict()
    assert [(d["seq"], d["cause"]) for d in after["doubts"]] == [(5, "upstream")]
    assert "Warning 3010" in after["doubts"][0]["error"]


async def test_a_timed_out_pushs_doubt_ends_once_later_acked_pushes_set_its_fields(
    rec: Recorder,
) -> None:
    """A push doubt (no answer in time) ends field by field as later applied updates set its
    fields again (the session view's ``in_doubt`` says the same); a push merely sent, not yet
    answered, ends none."""
    base: dict[str, Any] = {"system_prompt": "a", "keyterms": ["x"]}
    rec.add(version=1, cause="connect", status="sent", config=base)
    b = {"system_prompt": "b", "keyterms": ["y"]}
    rec.add(version=2, cause="policy", status="sent", delta=b, config=apply(base, b))
    timeout = rec.add(version=2, cause="policy", status="unverified", delta=b, config=base,
                      error="no acknowledgement within 5s")  # fmt: skip
    c = {"system_prompt": "c"}
    in_flight = rec.add(version=3, cause="policy", status="sent", delta=c, config=apply(base, c))
    acked = rec.add(version=3, cause="policy", status="acked", delta=c, config=apply(base, c))
    d = {"keyterms": ["z"]}
    done = rec.add(version=4, cause="policy", status="acked", delta=d,
                   config=apply(apply(base, c), d))  # fmt: skip
    rows = await rec.rows()

    assert config_at("s", rows, timeout).to_dict()["in_doubt"] is True
    assert config_at("s", rows, in_flight).to_dict()["in_doubt"] is True
    half = config_at("s", rows, acked).to_dict()  # (keyterms still in doubt)
    assert [(d["seq"], d["status"]) for d in half["doubts"]] == [(3, "unverified")]
    assert (config_at("s", rows, done).to_dict()["doubts"]) == []

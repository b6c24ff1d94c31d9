"""``LiveSession.inputs()``: a session's resolution keys are computed once and reused while
its labels and client config are the same objects, and recomputed when either is replaced
(relabel, a client's own update), so a fan-out never resolves a session from stale inputs.
And the rollout bookkeeping a fan-out updates from each resolution."""

from __future__ import annotations

from typing import Any

from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push, PushState
from controlplane.push.rollout_status import mark_policies, update_policy_status
from policies.provenance import PolicyRef
from policies.resolve import Effective, Inputs, client_key
from sessions.dialects import dialect_for
from sessions.model import Session


class _Transport:
    acknowledging = True

    def congested(self) -> bool:
        return False

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        raise AssertionError("not written in these tests")


def _live(labels: dict[str, str], client_config: dict[str, Any]) -> LiveSession:
    session = Session(
        id="s1", kind="streaming-v3", model="u3-rt-pro", labels=labels,
        client_config=client_config,
    )  # fmt: skip
    push = PushState.start(acknowledging=True, config={}, refs=(), version=1)
    return LiveSession(session=session, push=push, transport=_Transport(),
                       dialect=dialect_for("streaming-v3"))  # fmt: skip


def test_inputs_are_reused_while_labels_and_client_config_are_the_same_objects() -> None:
    ls = _live({"tenant": "acme"}, {"prompt": "hi"})
    first = ls.inputs()
    assert ls.inputs() is first
    assert first.key == ("streaming-v3", "u3-rt-pro", (("tenant", "acme"),))
    assert first.client == client_key({"prompt": "hi"})
    assert ls.target is first.target


def test_replaced_labels_give_new_inputs() -> None:
    ls = _live({"tenant": "acme"}, {})
    before = ls.inputs()
    ls.session.labels = {"tenant": "globex"}
    after = ls.inputs()
    assert after is not before
    assert after.target.labels == {"tenant": "globex"}
    assert after == Inputs.of(after.target, {})
    assert after.key == ("streaming-v3", "u3-rt-pro", (("tenant", "globex"),))


def test_a_replaced_client_config_gives_new_inputs() -> None:
    ls = _live({}, {"prompt": "hi"})
    before = ls.inputs()
    ls.session.client_config = {"prompt": "bye"}
    after = ls.inputs()
    assert after is not before
    assert after.client_config == {"prompt": "bye"}
    assert after.client == client_key({"prompt": "bye"})


# -- rollout bookkeeping (LiveSession.policy_status) after a resolution ---------------------
def _status_after(
    before: dict[str, tuple[int, str | None, str]], applied: tuple[PolicyRef, ...], pending: bool
) -> dict[str, tuple[int, str | None, str]]:
    ls = _live({}, {})
    ls.policy_status = dict(before)
    effective = Effective({}, {}, {}, applied)
    update_policy_status(ls, effective, pending)
    return ls.policy_status


def test_policy_status_of_one_policy_version_to_the_next() -> None:
    a1, a2 = PolicyRef("a", 1), PolicyRef("a", 2)
    assert _status_after({"a": (1, None, "acked")}, (a1,), pending=False) == {
        "a": (1, None, "acked")
    }
    assert _status_after({"a": (1, None, "acked")}, (a1,), pending=True) == {
        "a": (1, None, "pending")
    }
    assert _status_after({"a": (1, None, "acked")}, (a2,), pending=True) == {
        "a": (2, None, "pending")
    }
    assert _status_after({"a": (1, None, "acked")}, (a2,), pending=False) == {
        "a": (2, None, "unchanged")
    }


def test_policy_status_drops_policies_that_no_longer_apply() -> None:
    a, b = PolicyRef("a", 1), PolicyRef("b", 3, "treatment")
    assert _status_after({"a": (1, None, "acked")}, (b,), pending=True) == {
        "b": (3, "treatment", "pending")
    }
    both = {"a": (1, None, "acked"), "b": (3, "treatment", "acked")}
    assert _status_after(both, (b,), pending=False) == {"b": (3, "treatment", "acked")}
    assert _status_after(both, (), pending=False) == {}
    assert _status_after({"a": (1, None, "acked")}, (a, b), pending=True) == {
        "a": (1, None, "pending"),
        "b": (3, "treatment", "pending"),
    }


def test_a_refusal_is_marked_only_on_the_policy_owning_the_refused_field() -> None:
    a, b = PolicyRef("a", 1), PolicyRef("b", 2)
    ls = _live({}, {})
    ls.policy_status = {"a": (1, None, "acked")}
    effective = Effective({"prompt": "p", "keyterms": ("x",)}, {"prompt": a, "keyterms": b},
                          {}, (a, b))  # fmt: skip
    update_policy_status(ls, effective, True)
    assert ls.policy_status == {"a": (1, None, "pending"), "b": (2, None, "pending")}
    push = Push(version=3, delta={"keyterms": ("x",)}, config=effective.config, refs=(a, b),
                cause="policy", superseded=(), event_at=None,
                owners=effective.provenance)  # fmt: skip
    # refused for keyterms (b's field): a rode along and keeps what it had
    mark_policies(ls, push, "rejected", ("keyterms",))
    assert ls.policy_status == {"a": (1, None, "acked"), "b": (2, None, "rejected")}
    assert ls.prior_status == {}
    # a later push that holds back b's quarantined value: b stays rejected, a is acked
    held = Push(version=4, delta={"prompt": "q"}, config=effective.config, refs=(a, b),
                cause="policy", superseded=(), event_at=None, owners=effective.provenance,
                held=("keyterms",))  # fmt: skip
    mark_policies(ls, held, "acked")
    assert ls.policy_status == {"a": (1, None, "acked"), "b": (2, None, "rejected")}

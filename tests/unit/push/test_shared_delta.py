"""Consecutive takes of a fan-out share one delta object when their sessions' bases are
equal (not only the same object), so the frame is encoded and recognised once; a session
whose base differs gets its own, correct delta."""

from __future__ import annotations

from controlplane.push.protocol import PushState
from policies.fields import Config


def _state(base: Config) -> PushState:
    state = PushState.start(acknowledging=True, config=base, refs=(), version=1)
    state.ready = True
    return state


def test_sessions_with_equal_bases_share_the_delta_and_others_get_their_own() -> None:
    desired: Config = {"prompt": "Be brief.", "keyterms": ("Acme",)}
    a, b = _state({"keyterms": ("Acme",)}), _state({"keyterms": ("Acme",)})
    other = _state({"prompt": "Be brief."})
    for state in (a, b, other):
        state.want(desired, (), "policy")
    first, second, third = (s.take(0.0) for s in (a, b, other))
    assert first is not None and second is not None and third is not None
    assert a.base is not b.base  # equal, distinct objects (each session's own connect config)
    assert first.delta == {"prompt": "Be brief."}
    assert second.delta is first.delta
    assert third.delta == {"keyterms": ("Acme",)}
    again = _state({"keyterms": ("Acme",)})  # after another base: decided afresh, still right
    again.want(desired, (), "policy")
    fourth = again.take(0.0)
    assert fourth is not None and fourth.delta == {"prompt": "Be brief."}

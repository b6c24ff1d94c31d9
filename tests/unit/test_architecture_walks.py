"""docs/architecture.md: the walk of one client update is checked like the walk of one policy
event (``test_architecture_doc``): at most 10 numbered modules, each existing and reached from
an earlier step by an import, from the gateway's pump to the version log."""

from __future__ import annotations

from tests.unit.test_architecture_doc import MAX_STEPS, _check_reached, _section, _walk


def _client_walk() -> list[tuple[int, str, str | None]]:
    return _walk(_section("The walk of one client update"))


def test_the_client_update_walk_has_at_most_ten_numbered_steps_each_reached() -> None:
    steps = _client_walk()
    assert [n for n, _, _ in steps] == list(range(1, len(steps) + 1))
    assert 0 < len(steps) <= MAX_STEPS
    _check_reached(steps)


def test_the_client_update_walk_goes_from_the_edge_through_the_port_to_the_log() -> None:
    modules = [m for _, m, _ in _client_walk()]
    assert modules[0].startswith("controlplane.edges.")
    for stage in ("controlplane.edges.proxy", "controlplane.push.agent_acks",
                  "controlplane.service.sessions", "controlplane.push.engine"):  # fmt: skip
        assert stage in modules, stage
    assert modules[-1].startswith("sessions.versionlog.")

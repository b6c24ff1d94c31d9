"""docs/architecture.md matches the code: the rooms of ``controlplane/`` and the import-linter
layers it draws, and the walk of one policy event (issue #22: at most 10 modules, each named).

The walk is checked against the import graph (grimp, the graph import-linter builds): every
step names a module that exists and that an earlier step reaches by an import, either way (a
callback registered with the bus, a protocol implemented by an edge), directly or through the
protocol module the step names ("(through `x`)": an earlier step imports ``x`` and this
step's module imports ``x`` too). A walk that skips a module on the way fails.
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
MAX_STEPS = 10

_STEP = re.compile(r"^(\d+)\. `([a-z_][a-z0-9_.]*)`(?: \(through `([a-z_][a-z0-9_.]*)`\))?")


@cache
def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("controlplane", "sessions", "policies", "emulator")


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _walk(text: str | None = None) -> list[tuple[int, str, str | None]]:
    steps = []
    if text is None:
        text = _section("The walk of one policy event")
    for line in text.splitlines():
        found = _STEP.match(line)
        if found:
            steps.append((int(found.group(1)), found.group(2), found.group(3)))
    return steps


def _linked(graph: grimp.ImportGraph, a: str, b: str) -> bool:
    return graph.direct_import_exists(importer=a, imported=b) or graph.direct_import_exists(
        importer=b, imported=a
    )


def test_the_policy_walk_has_at_most_ten_numbered_steps_in_order() -> None:
    steps = _walk()
    assert steps, "no numbered walk found in docs/architecture.md"
    assert [n for n, _, _ in steps] == list(range(1, len(steps) + 1))
    assert len(steps) <= MAX_STEPS, [m for _, m, _ in steps]
    modules = [m for _, m, _ in steps]
    assert len(set(modules)) == len(modules), modules


def test_each_step_of_the_policy_walk_exists_and_is_reached_from_an_earlier_one() -> None:
    _check_reached(_walk())


def _check_reached(steps: list[tuple[int, str, str | None]]) -> None:
    graph = _graph()
    seen: list[str] = []
    for n, module, through in steps:
        assert module in graph.modules, f"step {n}: no module {module}"
        if seen:
            if through is None:
                reached = any(_linked(graph, earlier, module) for earlier in seen)
                how = "an import to or from an earlier step"
            else:
                assert through in graph.modules, f"step {n}: no module {through}"
                reached = graph.direct_import_exists(importer=module, imported=through) and any(
                    graph.direct_import_exists(importer=earlier, imported=through)
                    for earlier in seen
                )
                how = f"{through}, imported by it and by an earlier step"
            assert reached, f"step {n} ({module}) is not reached through {how}: {seen}"
        seen.append(module)


def test_the_walk_goes_from_the_bus_to_the_socket() -> None:
    modules = [m for _, m, _ in _walk()]
    assert modules[0] == "controlplane.intake.bus"
    for stage in ("intake.store", "policies.resolve", "push.", "dialects.", "versionlog."):
        assert any(stage in m for m in modules), stage
    assert any(m.startswith("controlplane.edges.") for m in modules)


@pytest.mark.parametrize("walk", [
    "1. `controlplane.intake.bus` — a\n2. `controlplane.edges.gateway` — b\n",
    "1. `controlplane.intake.bus` — a\n2. `controlplane.nowhere` — b\n",
])  # fmt: skip
def test_a_walk_that_skips_a_module_or_names_a_missing_one_is_refused(walk: str) -> None:
    """The checker itself: a jump the import graph does not have fails it."""
    steps = _walk(walk)
    assert len(steps) == 2
    with pytest.raises(AssertionError, match="step 2"):
        _check_reached(steps)


def test_the_rooms_drawn_are_the_import_linter_layers_and_every_room_is_named() -> None:
    rooms = _section("The rooms of `controlplane/`")
    drawn = re.search(r"```\n(.*?)```", rooms, re.S)
    assert drawn is not None
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c.get("containers") == ["controlplane"]
    ]
    assert drawn.group(1).splitlines() == contract["layers"]
    package = ROOT / "controlplane"
    for path in sorted(package.iterdir()):
        if path.is_dir() and (path / "__init__.py").exists():
            assert f"`{path.name}/`" in rooms, f"room {path.name}/ is not in the doc"
        elif path.suffix == ".py" and path.name != "__init__.py":
            assert f"`{path.stem}`" in rooms or f"`{path.name}`" in rooms, path.name


def test_every_module_of_every_room_is_named_in_its_row() -> None:
    """A module added to a room without a word in the doc fails here (``name``,
    ``name.Thing`` or a ``prefix*`` group count)."""
    rows = {}
    for line in _section("The rooms of `controlplane/`").splitlines():
        found = re.match(r"^\| `([a-z_]+)/` \| (.*)\|$", line)
        if found:
            rows[found.group(1)] = found.group(2)
    missing = []
    for room in sorted((ROOT / "controlplane").iterdir()):
        if not (room / "__init__.py").exists():
            continue
        row = rows[room.name]
        named = set(re.findall(r"`([a-z_]+)(?:\.[A-Za-z_.]+)?`", row))
        groups = re.findall(r"`([a-z_]+)\*`", row)
        for module in sorted(room.glob("*.py")):
            stem = module.stem
            if stem.startswith("__") or stem in named:
                continue
            if not any(stem.startswith(prefix) for prefix in groups):
                missing.append(f"{room.name}/{module.name}")
    assert missing == []

"""``@value`` classes: frozen for the type checker, plain slotted dataclasses at run time."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from mypy import api as mypy_api

from policies.values import value

ROOT = Path(__file__).resolve().parents[2]


@value
class _Point:
    x: int
    y: int = 0


def test_value_compares_by_fields_and_has_slots_only() -> None:
    assert _Point(1) == _Point(1, 0)
    assert _Point(1) != _Point(2)
    assert not hasattr(_Point(1), "__dict__")
    with pytest.raises(TypeError):
        hash(_Point(1))  # unhashable, like the frozen classes it replaced (they hold dicts)


def test_assigning_a_field_of_a_value_class_is_a_type_error(tmp_path: Path) -> None:
    """What keeps ``Push``, ``LogEntry``, ``Target``... immutable is mypy in CI."""
    source = tmp_path / "uses_value.py"
    source.write_text(
        textwrap.dedent(
            """
            from controlplane.push.protocol import Push
            from policies.values import value

            @value
            class P:
                a: int

            def change(p: P, push: Push) -> None:
                p.a = 2
                push.version = 3
            """
        )
    )
    limit = sys.getrecursionlimit()
    try:
        out, _, status = mypy_api.run(
            ["--strict", "--no-incremental", "--follow-imports=silent", str(source)]
        )
    finally:  # mypy raises it to 16,384 for the process: json's depth refusals would not fire
        sys.setrecursionlimit(limit)
    assert status == 1, out
    assert 'uses_value.py:10: error: Property "a" defined in "P" is read-only' in out
    assert 'uses_value.py:11: error: Property "version" defined in "Push" is read-only' in out

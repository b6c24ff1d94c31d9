"""Pure input parsing: selectors, label patches, CSV export (no server)."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from controlplane.api.inputs import parse_json, parse_yaml
from controlplane.api.labels import parse_labels_patch, parse_selector
from controlplane.api.routes import ASSIGNMENT_COLUMNS, assignments_csv
from controlplane.errors import BadRequest


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], None),
        ([""], None),
        (["tenant=acme"], {"tenant": ["acme"]}),
        (["region=eu-west-1,region=eu-central-1"], {"region": ["eu-west-1", "eu-central-1"]}),
        (["region in (eu-west-1, eu-central-1)"], {"region": ["eu-west-1", "eu-central-1"]}),
        (
            ["region in (eu-west-1,eu-central-1),tenant=acme"],
            {"region": ["eu-west-1", "eu-central-1"], "tenant": ["acme"]},
        ),
        (["a=1", "b=2"], {"a": ["1"], "b": ["2"]}),  # several parameters join with commas
        ([" a = 1 , a=1 "], {"a": ["1"]}),  # whitespace trimmed, duplicates collapsed
        (["caller_id=+1555"], {"caller_id": ["+1555"]}),
        (["k.v-x_y=a=b"], {"k.v-x_y": ["a=b"]}),
        (["a in (x),a=y"], {"a": ["x", "y"]}),
    ],
)
def test_selector_parses(raw: list[str], expected: dict[str, list[str]] | None) -> None:
    assert parse_selector(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("tenant", "must be key=value or key in (v1,v2)"),
        ("a=1,,b=2", "empty term"),
        ("a=", "empty value for key 'a'"),
        ("=x", "selector key"),
        ("a b=c", "selector key"),
        ("a!=b", "selector key"),
        ("k in (a,b", "unbalanced '('"),
        ("k in a,b)", "unbalanced ')'"),
        ("k in ((a))", "nested parentheses"),
        ("k in ()", "empty value"),
        ("k in (a,,b)", "empty value"),
        ("k=(a)", "must be key=value"),
        ("k=" + "v" * 257, "limit is 256"),
        ("k" * 64 + "=v", "{1,63}"),
        (",".join(f"k{i}=v" for i in range(65)), "over 64 terms"),
        ("a=" + "x" * 5000, "over 4096 characters"),
    ],
)
def test_selector_errors_name_the_rule(raw: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_selector([raw])
    assert fragment in info.value.message
    assert info.value.status == 400


def test_labels_patch_sets_and_removes() -> None:
    body = {"labels": {"tier": "gold", "old": None, "empty": ""}}
    assert parse_labels_patch(body) == {"tier": "gold", "old": None, "empty": ""}


def test_assignments_csv_has_header_documented_columns_and_extras() -> None:
    rows: list[dict[str, Any]] = [
        {"session_id": "s-1", "variant": "control", "version": 3, "assigned_at": 1.5},
        {"session_id": "s-2", "variant": 'a, "b"', "weight": 50, "meta": {"x": [1]}},
    ]
    text = assignments_csv(rows)
    assert text.endswith("\r\n")
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == [*ASSIGNMENT_COLUMNS, "meta", "weight"]
    first = dict(zip(parsed[0], parsed[1], strict=True))
    assert first["session_id"] == "s-1" and first["version"] == "3"
    assert first["assigned_at"] == "1.5" and first["model"] == "" and first["weight"] == ""
    second = dict(zip(parsed[0], parsed[2], strict=True))
    assert second["variant"] == 'a, "b"'  # quoted and round-trips
    assert second["meta"] == '{"x":[1]}'


def test_assignments_csv_of_nothing_is_just_the_header() -> None:
    assert assignments_csv([]) == ",".join(ASSIGNMENT_COLUMNS) + "\r\n"


def test_a_json_body_may_start_with_a_byte_order_mark_like_a_yaml_one() -> None:
    # a policy saved as JSON by a Windows editor: "Unexpected UTF-8 BOM (decode using utf-8-sig)"
    bom = "\ufeff".encode()
    assert parse_json(bom + b'{"id": "a"}') == {"id": "a"}
    assert parse_yaml(bom + b"id: a\n") == {"id": "a"}
    with pytest.raises(BadRequest, match="empty"):
        parse_json(bom)

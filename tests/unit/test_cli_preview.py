"""``policy preview`` printed its breakdowns as raw JSON objects
(``by kind: {"streaming-v3":{"targeted":1,"changed":0}}``); now one readable line each."""

from __future__ import annotations

from controlplane.cli.policy import preview_breakdown


def test_breakdowns_read_as_text() -> None:
    answer = {"by_kind": {"voice-agent-v1": {"targeted": 2, "changed": 0},
                          "streaming-v3": {"targeted": 5, "changed": 3}},
              "by_variant": {"warm": 4, "control": 3}}  # fmt: skip
    assert preview_breakdown(answer) == [
        "by kind (changed of targeted): streaming-v3 3 of 5, voice-agent-v1 0 of 2",
        "by variant (targeted): control 3, warm 4",
    ]
    assert preview_breakdown({"by_kind": {}, "by_variant": {}}) == []

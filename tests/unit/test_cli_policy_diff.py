"""``policy diff``: two long prompts that differ at the end were shown cut at the same
place ("…told the call is r…" on both sides): a diff that hid the difference."""

from __future__ import annotations

from controlplane.cli.history import diff_documents, diff_text

PROMPT = "Transcribe verbatim. The caller has been told the call is recorded."
V1 = {"id": "eu", "version": 1, "priority": 0, "set": {"prompt": PROMPT}}
V2 = {"id": "eu", "version": 2, "priority": 3,
      "set": {"prompt": "Transcribe verbatim. The caller has been told the call is recorded "
                        "and transcribed.\n"}}  # fmt: skip


def test_long_values_are_shown_whole_so_the_difference_shows() -> None:
    text = diff_text(diff_documents(V1, V2), 1, 2)
    assert "…" not in text
    assert text.splitlines() == [
        "priority",
        "  version 1: 0",
        "  version 2: 3",
        "set.prompt",
        '  version 1: "Transcribe verbatim. The caller has been told the call is recorded."',
        '  version 2: "Transcribe verbatim. The caller has been told the call is recorded and'
        ' transcribed.\\n"',
    ]


def test_short_values_stay_a_table() -> None:
    text = diff_text(diff_documents({"priority": 0, "reason": "a"}, {"priority": 3}), 1, 2)
    assert [line.split() for line in text.splitlines()] == [
        ["FIELD", "VERSION", "1", "VERSION", "2"], ["priority", "0", "3"], ["reason", "a", "-"],
    ]  # fmt: skip

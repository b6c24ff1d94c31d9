"""``exposure_problem`` (``controlplane experiments verify``): an exposure must name an entry
that runs its variant. A doubt (``upstream`` unverified), an update no answer confirmed in time
(``unverified`` with an error) and a client's own update name the variant's policy too (their
``policies`` are the session's) but never expose: an exposure naming one is not backed."""

from __future__ import annotations

from typing import Any

import pytest

from sessions.config_at import LATE_ANSWER
from sessions.exposures import exposure_problem

REF = {"id": "greet", "version": 1, "variant": "warm"}
ROW = {"exposed_at": "2026-12-07T13:00:00Z", "exposed_seq": 3, "exposed_hash": "h3",
       "policy": "greet", "variant": "warm"}  # fmt: skip


def _log(**entry: Any) -> list[dict[str, Any]]:
    third = {"seq": 3, "hash": "h3", "policies": [REF], "cause": "policy", "status": "acked",
             "error": None, **entry}  # fmt: skip
    return [{"seq": 1, "hash": "h1", "policies": [], "cause": "connect", "status": "sent"},
            {"seq": 2, "hash": "h2", "policies": [REF], "cause": "policy", "status": "sent"},
            third]  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({}, None),
        ({"status": "unchanged"}, None),
        ({"status": "unverified"}, None),  # an app's `applied` on Streaming v3
        ({"status": "unverified", "error": LATE_ANSWER}, None),  # ... after the timeout
        ({"cause": "upstream", "status": "unverified", "error": "Warning 3010"}, "cause"),
        ({"status": "unverified", "error": "no acknowledgement within 3s"}, "not known to run"),
        ({"cause": "client", "status": "acked"}, "cause"),
        ({"status": "rejected", "error": "refused"}, "status"),
    ],
)
def test_only_an_entry_that_runs_the_variant_backs_an_exposure(
    entry: dict[str, Any], problem: str | None
) -> None:
    found = exposure_problem(ROW, _log(**entry))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found

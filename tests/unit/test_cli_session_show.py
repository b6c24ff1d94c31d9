"""``sessions show`` printed ``created_at: 1796627102.192166``; its instants are RFC 3339
UTC like every table's (``--json`` keeps the server's numbers)."""

from __future__ import annotations

import yaml

from controlplane.cli.sessions import session_text


def test_instants_are_rfc3339_and_the_rest_is_as_answered() -> None:
    session = {"id": "cps_1", "kind": "streaming-v3", "created_at": 1796627102.192166,
               "updated_at": 1796627102.5, "ended_at": None,
               "versions": {"desired": 2}}  # fmt: skip
    shown = yaml.safe_load(session_text(session))
    assert shown == {"id": "cps_1", "kind": "streaming-v3",
                     "created_at": "2026-12-07T07:05:02.192Z",
                     "updated_at": "2026-12-07T07:05:02.500Z", "ended_at": None,
                     "versions": {"desired": 2}}  # fmt: skip

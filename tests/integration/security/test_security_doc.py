"""docs/security.md stays true: every test it cites exists, and its REST rows are the route
table's (every route that writes or needs more than viewer, with its minimum role)."""

from __future__ import annotations

import re
from pathlib import Path

from controlplane.api.routes import ROUTES
from controlplane.roles import ROLE_NAMES, Role

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
CITED = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
REST_ROW = re.compile(r"^\| [^|]+ \| `(GET|POST|PATCH|PUT|DELETE) (/[^`]+)` \| ([^|]+) \|", re.M)


def test_every_cited_test_exists() -> None:
    cited = CITED.findall(DOC)
    assert len(cited) >= 30
    for path, name in cited:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{path}::{name} is gone"


def test_the_rest_rows_are_the_route_table() -> None:
    rows = {(m, p): cell for m, p, cell in REST_ROW.findall(DOC)}
    routes = {(r.method, r.path): r.role for r in ROUTES
              if r.role is not None and (r.method != "GET" or r.role > Role.VIEWER)}  # fmt: skip
    assert set(rows) == set(routes), set(rows) ^ set(routes)
    for key, role in routes.items():
        first = re.search(rf"\b({'|'.join(ROLE_NAMES)})\b", rows[key])
        assert first is not None and first.group(1) == role.label, (key, rows[key])

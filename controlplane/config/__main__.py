"""``python -m controlplane.config FILE``: rewrite the settings table in FILE (between the
``<!-- settings:begin -->`` and ``<!-- settings:end -->`` markers) from the declarations;
without FILE, print the table."""

from __future__ import annotations

import sys
from pathlib import Path

from controlplane.config import docs_table

__all__ = ["BEGIN", "END", "rewrite"]

BEGIN = "<!-- settings:begin (generated: python -m controlplane.config FILE) -->"
END = "<!-- settings:end -->"


def rewrite(text: str) -> str:
    """``text`` with the section between the markers replaced by the generated table."""
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"no {BEGIN} ... {END} section")
    return f"{head}{BEGIN}\n\n{docs_table()}\n{END}{tail}"


if __name__ == "__main__":
    if len(sys.argv) == 1:
        print(docs_table())
    for name in sys.argv[1:]:
        path = Path(name)
        path.write_text(rewrite(path.read_text(encoding="utf-8")), encoding="utf-8")

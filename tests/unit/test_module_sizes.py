"""No product module is over 500 lines (issue #22; STYLE.md: split by responsibility before
that): every ``*.py`` under the product packages and the load test, counted as ``wc -l`` does
(newlines). The failure names every offender with its size, largest first."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("controlplane", "sessions", "policies", "emulator", "loadtest")
MAX_LINES = 500


def _sizes() -> dict[str, int]:
    return {
        path.relative_to(ROOT).as_posix(): path.read_bytes().count(b"\n")
        for package in PRODUCT
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def test_every_product_package_is_measured() -> None:
    """A renamed or moved package would make the size check pass by measuring nothing."""
    sizes = _sizes()
    for package in PRODUCT:
        assert any(name.startswith(f"{package}/") for name in sizes), package


def test_no_product_module_is_over_the_limit() -> None:
    over = sorted(((n, name) for name, n in _sizes().items() if n > MAX_LINES), reverse=True)
    listing = "\n".join(f"  {name}: {n} lines" for n, name in over)
    assert not over, f"modules over {MAX_LINES} lines (split them by responsibility):\n{listing}"

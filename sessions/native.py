"""The compiled build: which modules mypyc compiles, and the guard that never runs a stale one.

The per-session path of a policy fan-out (push state, recording, the version log's chain,
the frame write) can be compiled to C extensions by mypyc (``build_native.py`` at the root of
the checkout; ``make install``, ``make test`` and ``make serve`` run it, and it rebuilds only
when a source changed). ``COMPILED`` below is the one list of those modules; the sources stay
the reference: without a build (no compiler, ``CONTROLPLANE_PURE=1 make install``, a checkout
never built) the same code runs interpreted and the same suite passes.

Never stale: the build writes ``native-build.json`` next to this module, the SHA-256 of each
compiled module's source and of the first-party modules it imports (mypyc bakes their
``Final`` constants and class layouts in). ``guard()`` runs when ``sessions`` or
``controlplane`` is imported, before any compiled module can be: when a recorded source
changed since the build (or a compiled module's extension is missing, or one exists without
the manifest) it raises ``StaleBuild`` naming the modules and how to fix it, instead of
running code that is not the source. ``CONTROLPLANE_PURE=1`` in the environment runs the
sources even when a build exists (every listed module loaded from its ``.py``).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Final

__all__ = [
    "COMPILED",
    "MANIFEST",
    "PURE_ENV",
    "ROOT",
    "StaleBuild",
    "compiled_modules",
    "extension_path",
    "guard",
    "manifest",
    "problems",
    "source_digest",
    "source_path",
]

# The modules compiled together (one mypyc group): the per-session path of a fan-out.
# A module here may not be subclassed or monkeypatched by interpreted code unless its class
# says so (``mypy_extensions.mypyc_attr(allow_interpreted_subclasses=True)``); a value of the
# wrong type raises TypeError where the interpreter would carry on (CONTRIBUTING.md).
COMPILED: Final = (
    "controlplane.push.coalescing",
    "controlplane.push.fanout",
    "controlplane.push.frames",
    "controlplane.push.live",
    "controlplane.push.protocol",
    "controlplane.push.recording",
    "controlplane.push.registry_sync",
    "controlplane.push.rollout_status",
    "controlplane.push.sending",
    "controlplane.push.timers",
    "controlplane.push.write_ahead",
    "controlplane.edges.control_transport",
    "sessions.model",
    "sessions.versionchain",
    "sessions.versionlog.core",
    "sessions.versionlog.file",
    "sessions.versionlog.members",
    "sessions.versionlog.memory",
)

ROOT: Final = Path(__file__).resolve().parent.parent  # holds controlplane/, sessions/, ...
MANIFEST: Final = Path(__file__).resolve().with_name("native-build.json")
PURE_ENV: Final = "CONTROLPLANE_PURE"
_SUFFIX: Final = importlib.machinery.EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so


_checked = False  # guard() found the build (or its absence) matching the sources


class StaleBuild(ImportError):
    """A compiled module does not match its source: refused (``guard``)."""


def source_path(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def extension_path(module: str, root: Path = ROOT) -> Path:
    parts = module.split(".")
    return root.joinpath(*parts[:-1], parts[-1] + _SUFFIX)


def source_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def manifest(path: Path = MANIFEST) -> dict[str, Any] | None:
    """The last build's manifest, or None when nothing is built."""
    try:
        loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return loaded


def problems(
    root: Path = ROOT, path: Path | None = None, compiled: Sequence[str] = COMPILED
) -> list[str]:
    """Why the compiled build under ``root`` may not run (empty: it may, or none exists)."""
    found = manifest(path or root / "sessions" / MANIFEST.name)
    if found is None:
        # extensions without a manifest: a build interrupted, or a manifest deleted
        return [
            f"{m}: compiled extension without a build manifest"
            for m in compiled
            if extension_path(m, root).exists()
        ]
    wrong: list[str] = []
    if found.get("python") != sys.implementation.cache_tag:
        wrong.append(f"built for {found.get('python')}, this is {sys.implementation.cache_tag}")
    built: dict[str, str] = found.get("modules", {})
    for m in built:
        if not extension_path(m, root).exists():
            wrong.append(f"{m}: compiled extension missing")
    wrong.extend(
        f"{m}: compiled extension not in the build manifest"
        for m in compiled
        if m not in built and extension_path(m, root).exists()
    )
    sources: dict[str, str] = found.get("sources", {})
    for name, digest in sources.items():
        if source_digest(root / name) != digest:
            wrong.append(f"{name} changed since the build")
    return wrong


class _Sources(importlib.abc.MetaPathFinder):
    """``CONTROLPLANE_PURE=1``: the listed modules are loaded from their sources."""

    def __init__(self, modules: frozenset[str]) -> None:
        self.modules = modules

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        for entry in path or sys.path:
            candidate = Path(entry, fullname.rpartition(".")[2] + ".py")
            if candidate.exists():
                return importlib.util.spec_from_file_location(fullname, candidate)
        return None


def guard() -> None:
    """Refuse a stale compiled build (``StaleBuild``), or run the sources with
    ``CONTROLPLANE_PURE=1``. Called by ``sessions/__init__`` and ``controlplane/__init__``;
    the check (a hash of every recorded source) runs once per process."""
    global _checked
    if _checked or any(isinstance(f, _Sources) for f in sys.meta_path):
        return
    if os.environ.get(PURE_ENV) == "1":
        built = manifest() or {}
        modules = frozenset(COMPILED) | frozenset(built.get("modules", {}))
        sys.meta_path.insert(0, _Sources(modules))
        return
    wrong = problems()
    if wrong:
        raise StaleBuild(
            "the compiled build (mypyc) does not match the sources: "
            + "; ".join(wrong[:5])
            + (f" (+{len(wrong) - 5} more)" if len(wrong) > 5 else "")
            + ". Rebuild it: `make native` (or `.venv/bin/python build_native.py`); or run the "
            "sources: `CONTROLPLANE_PURE=1` in the environment, or remove the build with "
            "`.venv/bin/python build_native.py --clean`"
        )
    _load_group()
    _checked = True


def _load_group(root: Path = ROOT) -> None:
    """Load the build's shared library (``<group>__mypyc``, at the root of the checkout: every
    compiled module's extension imports it) by its path. The root is on ``sys.path`` only when
    Python runs from it or ``PYTHONPATH`` names it; the installed package (an editable install)
    maps the packages alone, so ``controlplane serve`` started anywhere else failed with
    ``No module named 'controlplane_native__mypyc'``."""
    found = manifest(root / "sessions" / MANIFEST.name)
    if not found or not found.get("group"):
        return
    name = f"{found['group']}__mypyc"
    if name in sys.modules:
        return
    path = root / (name + _SUFFIX)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.exists():
        raise StaleBuild(f"the compiled build's shared library {path.name} is missing: "
                         "rebuild it with `make native`, or run the sources with "
                         "`CONTROLPLANE_PURE=1`")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def compiled_modules() -> dict[str, bool]:
    """Each listed module imported now, and whether it runs compiled (its extension)."""
    out = {}
    for m in COMPILED:
        module = sys.modules.get(m)
        if module is not None:
            loader = getattr(module.__spec__, "loader", None)
            out[m] = isinstance(loader, importlib.machinery.ExtensionFileLoader)
    return out

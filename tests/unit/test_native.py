"""The compiled build (``sessions.native``, ``build_native.py``): when it exists, the listed
modules are the ones loaded; a build whose sources changed is refused, never run;
``CONTROLPLANE_PURE=1`` runs the sources.

``.ci/run`` sets ``CONTROLPLANE_EXPECT_COMPILED=1``: there a missing build fails (a build that
silently did not happen would otherwise leave the suite testing the sources only).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sessions import native


def test_with_a_build_every_listed_module_runs_compiled_and_without_one_none_does() -> None:
    for module in native.COMPILED:
        importlib.import_module(module)
    loaded = native.compiled_modules()
    assert sorted(loaded) == sorted(native.COMPILED)
    built = native.manifest()
    if os.environ.get(native.PURE_ENV) == "1":
        assert not any(loaded.values()), loaded  # asked for the sources: every one of them
        return
    if os.environ.get("CONTROLPLANE_EXPECT_COMPILED") == "1":
        assert built is not None, "CONTROLPLANE_EXPECT_COMPILED=1 but nothing is built"
    if built is None:
        assert not any(loaded.values()), loaded
    else:
        assert sorted(built["modules"]) == sorted(native.COMPILED)
        interpreted = [m for m, compiled in loaded.items() if not compiled]
        assert interpreted == [], f"built, but loaded from source: {interpreted}"


def _fake_tree(tmp_path: Path, source: str, built_from: str) -> Path:
    """A checkout with ``sessions.native`` and one compiled module ``sessions.fake`` whose
    extension is garbage (loading it would fail loudly) and whose build recorded
    ``built_from`` as its source."""
    pkg = tmp_path / "sessions"
    pkg.mkdir()
    shutil.copy(native.__file__, pkg / "native.py")
    (pkg / "__init__.py").write_text("from sessions.native import guard\n\nguard()\n")
    (pkg / "fake.py").write_text(source)
    native.extension_path("sessions.fake", tmp_path).write_bytes(b"not an extension")
    digest = hashlib.sha256(built_from.encode()).hexdigest()
    manifest = {
        "python": sys.implementation.cache_tag,
        "modules": {"sessions.fake": "sessions/fake.so"},
        "sources": {"sessions/fake.py": digest},
    }
    (pkg / native.MANIFEST.name).write_text(json.dumps(manifest))
    return tmp_path


def _run(root: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    return subprocess.run([sys.executable, "-c", code], cwd=root, text=True, capture_output=True,
                          env={**environ, "PYTHONPATH": str(root), **env}, timeout=30,
                          check=False)  # fmt: skip


def test_a_build_whose_source_changed_is_refused_with_the_file_and_the_fix(
    tmp_path: Path,
) -> None:
    root = _fake_tree(tmp_path, "VALUE = 2\n", built_from="VALUE = 1\n")
    assert native.problems(root, compiled=()) == ["sessions/fake.py changed since the build"]
    done = _run(root, "import sessions.fake")
    assert done.returncode != 0
    assert "StaleBuild" in done.stderr
    assert "sessions/fake.py changed since the build" in done.stderr
    assert "make native" in done.stderr and "CONTROLPLANE_PURE=1" in done.stderr


def test_pure_runs_the_sources_even_with_a_build(tmp_path: Path) -> None:
    root = _fake_tree(tmp_path, "VALUE = 2\n", built_from="VALUE = 1\n")
    done = _run(root, "import sessions.fake as f; print(f.VALUE, f.__file__)",
                CONTROLPLANE_PURE="1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    value, path = done.stdout.split()
    assert value == "2" and path.endswith("fake.py")


def test_an_unchanged_build_passes_and_a_half_removed_one_does_not(tmp_path: Path) -> None:
    root = _fake_tree(tmp_path, "VALUE = 1\n", built_from="VALUE = 1\n")
    assert native.problems(root, compiled=()) == []
    native.extension_path("sessions.fake", root).unlink()
    assert native.problems(root, compiled=()) == ["sessions.fake: compiled extension missing"]
    native.extension_path("sessions.fake", root).write_bytes(b"x")
    (root / "sessions" / native.MANIFEST.name).unlink()
    assert native.problems(root, compiled=("sessions.fake",)) == [
        "sessions.fake: compiled extension without a build manifest"
    ]


def test_the_installed_command_runs_from_any_directory_without_pythonpath(
    tmp_path: Path,
) -> None:
    """What ``controlplane serve`` does in a container, a test's subprocess or an operator's
    shell: Python started outside the checkout, the package found through the install alone.
    Every compiled module's extension imports the build's shared library, which lives at the
    checkout's root (not a package): it must load all the same (it failed with
    ``No module named 'controlplane_native__mypyc'``)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", native.PURE_ENV)}
    code = (
        "import importlib, json; from sessions import native\n"
        "[importlib.import_module(m) for m in native.COMPILED]\n"
        "print(json.dumps([native.compiled_modules(), native.manifest() is not None]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True,
                          capture_output=True, env=environ, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    loaded, built = json.loads(done.stdout)
    assert sorted(loaded) == sorted(native.COMPILED)
    # compiled exactly when the installed tree has a build (CI: the checkout itself, built;
    # a worktree sharing another checkout's environment imports that one's)
    assert set(loaded.values()) == {built}, loaded


def _allows_interpreted_subclasses(node: ast.ClassDef) -> bool:
    for deco in node.decorator_list:
        if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "mypyc_attr":
            for kw in deco.keywords:
                if kw.arg == "allow_interpreted_subclasses":
                    return isinstance(kw.value, ast.Constant) and kw.value.value is True
    return False


def test_a_compiled_class_that_interpreted_code_derives_from_allows_it() -> None:
    """Interpreted code (tests' fault-injecting logs, modules not in the build) may derive from
    a compiled class only if the class says so: otherwise the compiled build fails with
    'interpreted classes cannot inherit from compiled' where the sources run fine. Checked on
    the sources, so it fails in a pure run too (a merge once dropped FileVersionLog's
    decorator; only CI's compiled suite noticed)."""
    compiled: dict[str, ast.ClassDef] = {}
    for module in native.COMPILED:
        tree = ast.parse(native.source_path(module).read_text(encoding="utf-8"))
        compiled.update({n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)})
    sources = set(map(native.source_path, native.COMPILED))
    roots = [native.ROOT / d for d in ("controlplane", "sessions", "policies", "emulator", "tests")]
    derived: dict[str, set[str]] = {}
    for path in (p for root in roots for p in root.rglob("*.py")):
        if path in sources:
            continue
        classes = [
            n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(n, ast.ClassDef)
        ]  # fmt: skip
        local = {n.name for n in classes}  # (a class of the same name defined here is not it)
        for node in classes:
            for base in node.bases:
                name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
                if name in compiled and name not in local:
                    derived.setdefault(name, set()).add(str(path.relative_to(native.ROOT)))
    assert "FileVersionLog" in derived  # (the tests' fault-injecting logs: the check sees them)
    refused = {
        name: sorted(where)
        for name, where in derived.items()
        if not _allows_interpreted_subclasses(compiled[name])
    }
    assert refused == {}, refused

"""Build (or remove) the compiled build: the modules ``sessions.native.COMPILED`` lists,
compiled by mypyc into C extensions next to their sources (docs/architecture.md, "The
compiled build").

    .venv/bin/python build_native.py            # build when a source changed (else: nothing)
    .venv/bin/python build_native.py --require  # the same, failing when it cannot be built
    .venv/bin/python build_native.py --clean    # remove it: the sources run
    CONTROLPLANE_PURE=1 .venv/bin/python build_native.py   # same as --clean

``make install``, ``make test`` and ``make serve`` run it. Without mypyc (a service-only
install) or without a C compiler it builds nothing and removes a build that no longer
matches its sources, so the sources run (``--require``: exit 1 instead). The manifest it
writes (``sessions/native-build.json``) records the SHA-256 of every compiled module's source
and of the first-party modules each imports; ``sessions.native.guard`` refuses to import a
build whose recorded sources changed since.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PURE = os.environ.get("CONTROLPLANE_PURE") == "1"  # (asked for no compiled build)
os.environ["CONTROLPLANE_PURE"] = "1"  # this script imports sessions.native: never the build
sys.path.insert(0, str(ROOT))

from sessions import native  # noqa: E402

GROUP = "controlplane_native"  # the shared library: <GROUP>__mypyc<suffix> at the root
FIRST_PARTY = ("controlplane", "sessions", "policies", "emulator")


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imports(module: str) -> set[str]:
    """The first-party modules ``module`` imports (its own package's too)."""
    path = native.source_path(module, ROOT)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in FIRST_PARTY and _module_file(m)}


def sources() -> dict[str, str]:
    """Every source a build depends on (relative path -> SHA-256)."""
    names = set(native.COMPILED)
    for m in native.COMPILED:
        names |= _imports(m)
    paths = {p for p in (_module_file(m) for m in names) if p is not None}
    paths.add(Path(native.__file__).resolve())
    out = {}
    for p in sorted(paths):
        digest = native.source_digest(p)
        assert digest is not None
        out[p.relative_to(ROOT).as_posix()] = digest
    return out


def fresh() -> bool:
    built = native.manifest()
    return (
        built is not None
        and sorted(built.get("modules", {})) == sorted(native.COMPILED)
        and built.get("sources") == sources()
        and not native.problems()
    )


def clean() -> list[Path]:
    """Remove the compiled build (extensions, group library, manifest); what was removed."""
    built = native.manifest() or {}
    modules = set(native.COMPILED) | set(built.get("modules", {}))
    gone = [native.extension_path(m, ROOT) for m in sorted(modules)]
    gone += sorted(ROOT.glob(f"{GROUP}__mypyc.*"))
    gone.append(native.MANIFEST)
    removed = [p for p in gone if p.exists()]
    native.MANIFEST.unlink(missing_ok=True)  # first: a half-removed build is refused (guard)
    for p in removed:
        p.unlink(missing_ok=True)
    shutil.rmtree(ROOT / "build" / "native", ignore_errors=True)
    return removed


def _toolchain() -> str | None:
    """Why it cannot be built here (None: it can)."""
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed (it comes with mypy: `make install`)"
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    include = Path(sysconfig.get_paths()["include"], "Python.h")
    if not include.exists():
        return f"no Python headers ({include})"
    return None


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution  # type: ignore[import-untyped]

    os.chdir(ROOT)  # mypy reads its settings from pyproject.toml
    paths = [native.source_path(m, ROOT).relative_to(ROOT).as_posix() for m in native.COMPILED]
    extensions = mypycify(paths, opt_level="3", debug_level="0", group_name=GROUP,
                          target_dir="build/native")  # fmt: skip
    dist = Distribution({"name": GROUP, "ext_modules": extensions})
    command = dist.get_command_obj("build_ext")
    command.inplace = True  # (next to the sources)
    command.build_temp = "build/native/temp"
    command.parallel = os.cpu_count() or 1
    dist.run_command("build_ext")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled build")
    parser.add_argument("--require", action="store_true", help="fail when it cannot be built")
    parser.add_argument("--quiet", action="store_true", help="say nothing when up to date")
    args = parser.parse_args()
    if args.clean or PURE:
        removed = clean()
        why = "--clean" if args.clean else "CONTROLPLANE_PURE=1"
        print(f"build_native: {why}: no compiled build, the sources run"
              + (f" (removed {len(removed)} files)" if removed else ""))  # fmt: skip
        return 0
    if fresh():
        if not args.quiet:
            print(f"build_native: up to date ({len(native.COMPILED)} modules compiled)")
        return 0
    missing = _toolchain()
    if missing is not None:
        removed = clean()
        print(f"build_native: not built: {missing}; the sources run"
              + (f" (removed a stale build: {len(removed)} files)" if removed else ""),
              file=sys.stderr)  # fmt: skip
        return 1 if args.require else 0
    clean()
    started = time.monotonic()
    print(f"build_native: compiling {len(native.COMPILED)} modules (mypyc) ...", flush=True)
    # (a child process: mypyc's build output and its errors, then the manifest only on success)
    done = subprocess.run([sys.executable, __file__, "--build-step"], cwd=ROOT, check=False,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        clean()
        sys.stderr.write(done.stdout[-6000:] + done.stderr[-6000:])
        print("build_native: FAILED (above); nothing compiled is left, the sources run",
              file=sys.stderr)  # fmt: skip
        return 1
    import mypy.version

    manifest = {
        "python": sys.implementation.cache_tag,
        "mypy": mypy.version.__version__,
        "group": GROUP,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "modules": {
            m: native.extension_path(m, ROOT).relative_to(ROOT).as_posix() for m in native.COMPILED
        },
        "sources": sources(),
    }
    native.MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"build_native: compiled {len(native.COMPILED)} modules in "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--build-step"]:
        build()
        sys.exit(0)
    sys.exit(main())

"""What can be checked of the image without a Docker engine: the Dockerfile and its context."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass, field

import pytest

from tests.integration.deploy.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PINNED_PYTHON = re.compile(
    r"^(docker\.io/library/)?python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?$"
)
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|python3?-dev|libc6-dev)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def of(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages and keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key.strip()] = default.strip()
        else:
            assert stages, f"instruction before FROM: {line}"
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


def test_multi_stage_with_a_pinned_slim_python_311_base() -> None:
    _, stages = parse_dockerfile()
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    for stage in stages:
        assert PINNED_PYTHON.match(stage.base), f"base image not pinned: {stage.base}"
    assert stages[0].base == stages[-1].base, "venv must run on the interpreter it was built on"


def test_builder_installs_the_project_wheel_into_a_venv() -> None:
    _, stages = parse_dockerfile()
    runs = " && ".join(stages[0].of("RUN"))
    assert "python -m venv /opt/venv" in runs
    assert "pip wheel" in runs
    assert "/opt/venv/bin/pip install" in runs and ".whl" in runs


def test_final_stage_runs_the_console_script_as_non_root() -> None:
    _, stages = parse_dockerfile()
    final = stages[-1]
    [user] = final.of("USER")
    name = user.split(":")[0]
    assert name not in ("root", "0"), user
    assert json.loads(final.of("ENTRYPOINT")[-1]) == ["controlplane"]
    assert json.loads(final.of("CMD")[-1]) == ["serve", "--listen", "0.0.0.0:8080"]
    assert final.of("EXPOSE") == ["8080"]
    copies = final.of("COPY")
    assert any(c.startswith("--from=builder /opt/venv") for c in copies), copies
    env = " ".join(final.of("ENV"))
    assert "/opt/venv/bin" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    # the entrypoint is the project's console script
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"]["controlplane"] == "controlplane.cli.main:main"


def test_final_stage_has_no_build_tools() -> None:
    _, stages = parse_dockerfile()
    final = stages[-1]
    for command in final.of("RUN"):
        assert "apt-get install" not in command and "apk add" not in command, command
        assert not BUILD_TOOLS.search(command), command
    assert "pip install" not in " ".join(final.of("RUN"))


def _dockerignore_rules() -> list[tuple[bool, str]]:
    rules: list[tuple[bool, str]] = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((negate, pattern.strip().rstrip("/").removeprefix("./")))
    return rules


def _pattern_matches(pattern: str, path: str) -> bool:
    """Docker semantics: a pattern matches a path or any of its parent directories."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(fnmatch.fnmatchcase(part, tail) for part in parts) or any(
            fnmatch.fnmatchcase(c, tail) for c in candidates
        )
    return any(
        fnmatch.fnmatchcase(c, pattern) and c.count("/") == pattern.count("/") for c in candidates
    )


def is_ignored(path: str) -> bool:
    ignored = False
    for negate, pattern in _dockerignore_rules():
        if _pattern_matches(pattern, path):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "controlplane/cli/main.py",
        "controlplane/api/routes.py",
        "sessions/model.py",
        "policies/model.py",
        "emulator/server.py",
        "emulator/assets/x.wav",
        "controlplane/py.typed",
        "build_native.py",  # the image compiles its own build (docs/architecture.md)
    ],
)
def test_build_context_keeps_what_the_wheel_needs(path: str) -> None:
    assert not is_ignored(path), path


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "data/audit.log",
        "deploy/helm/controlplane/values.yaml",
        "voice_controlplane.egg-info/PKG-INFO",
        "controlplane/__pycache__/cli.cpython-311.pyc",
        ".mypy_cache/3.11/x.json",
        "loadtest/locustfile.py",
        # a compiled build of the host's (the image builds its own)
        "controlplane/push/protocol.cpython-311-x86_64-linux-gnu.so",
        "sessions/native-build.json",
    ],
)
def test_build_context_leaves_out_local_state(path: str) -> None:
    assert is_ignored(path), path


def test_every_packaged_package_is_in_the_build_context() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    _, stages = parse_dockerfile()
    sources = {copy.split()[0] for copy in stages[0].of("COPY")}
    for include in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = include.rstrip("*").rstrip(".")
        assert not is_ignored(f"{package}/__init__.py"), package
        assert package in sources, f"builder does not COPY {package}"


def test_the_builder_compiles_with_the_pins_the_suite_is_checked_with() -> None:
    """The compiled build (docs/architecture.md) type-checks the compiled modules and what
    they import: the image's mypy and stubs are pyproject's dev pins, so a build that passes
    `make types` and the suite builds the same in the image."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dev = set(project["project"]["optional-dependencies"]["dev"])
    _, stages = parse_dockerfile()
    runs = " ".join(stages[0].of("RUN"))
    assert "build_native.py --require" in runs
    pins = set(re.findall(r"\b((?:mypy|types-[A-Za-z]+)==[\w.]+)", runs))
    assert {p.split("==")[0] for p in pins} >= {"mypy", "types-PyYAML"}, pins
    assert pins <= dev, f"not pyproject's dev pins: {pins - dev}"

"""Issue 24, the first hour: the README's copy-paste recipe works as written (emulator, serve
with a fixed token, a Streaming v3 call, `policy apply --wait`, `sessions status`), its doc
index lists every doc, and the docs cite only files in the repository."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def _heredoc(tag: str) -> str:
    """The body of the README's ``<<'TAG'`` here-document."""
    match = re.search(rf"<<'{tag}'\n(.*?)\n{tag}\n", README, re.S)
    assert match, f"no <<'{tag}' here-document in README.md"
    return match.group(1) + "\n"


def test_the_doc_index_lists_every_doc() -> None:
    index = README[README.index("## Documentation") :]
    listed = set(re.findall(r"\]\((docs/[^)#]+\.md)\)", index))
    present = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert present - listed == set(), "add these to the README's doc index"
    assert listed - present == set(), "the README's doc index names missing docs"


def test_docs_cite_only_files_in_the_repository() -> None:
    outside = re.compile(r"\.\./shared|/work/|\bDESIGN(\.md| §)|\bPROTOCOLS(\.md| §)|STYLE\.md")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not outside.search(line), f"{path.name}:{number} cites outside: {line}"
    for path in [*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in reversed(started):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_the_readme_first_call_recipe_works(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    token = "first-hour-token"
    emu, cp = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONTROLPLANE_", "EMULATOR_"))}  # fmt: skip
    env.update(CONTROLPLANE_TOKENS=f"admin:{token}", CONTROLPLANE_TOKEN=token,
               CONTROLPLANE_URL=f"http://127.0.0.1:{cp}")  # fmt: skip

    def start(*argv: str, **extra: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, env={**env, **extra}, cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(proc)
        return proc

    assert "make emulator" in README and "8090/v3/ws" in README
    start(str(BIN / "controlplane"), "emulator", "--listen", f"127.0.0.1:{emu}")
    start(
        str(BIN / "controlplane"), "serve", "--listen", f"127.0.0.1:{cp}",
        CONTROLPLANE_UPSTREAM_STREAMING_URL=f"ws://127.0.0.1:{emu}/v3/ws",
        CONTROLPLANE_UPSTREAM_AGENT_URL=f"ws://127.0.0.1:{emu}/v1/ws",
        CONTROLPLANE_DATA_DIR=str(tmp_path / "data"),
    )  # fmt: skip
    wait_port(emu, timeout=20)
    wait_port(cp, timeout=20)
    call = _heredoc("PY").replace("127.0.0.1:8080", f"127.0.0.1:{cp}")
    (tmp_path / "call.py").write_text(call)
    (tmp_path / "eu.yaml").write_text(_heredoc("YAML"))
    caller = start(sys.executable, str(tmp_path / "call.py"))
    assert caller.stdout is not None
    begin = caller.stdout.readline()
    assert "'type': 'Begin'" in begin, begin

    def controlplane(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [str(BIN / "controlplane"), *argv]
        return subprocess.run(command, env=env, cwd=tmp_path, check=False,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    deadline = time.monotonic() + 10
    while "region=eu-west-1" not in controlplane("sessions", "ls").stdout:
        assert time.monotonic() < deadline, "the call never showed up in sessions ls"
        time.sleep(0.2)
    applied = controlplane("policy", "apply", "-f", "eu.yaml", "--wait")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("published policy eu-disclosure version 1")
    assert "controlplane: converged: 1 session(s) final" in applied.stderr
    status = controlplane("sessions", "status", "--json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert (row["policy"], row["version"], row["status"]) == ("eu-disclosure", 1, "UNVERIFIED")


def test_make_serve_installs_the_service_without_the_test_extras() -> None:
    # `make serve` on a fresh machine installed dev + load + frameworks (~500 MB: numba,
    # onnxruntime, livekit's FFI, playwright) to run one process that needs none of them
    makefile = (ROOT / "Makefile").read_text()
    serve = re.search(r"^serve: (\S+)$", makefile, re.M)
    emulator = re.search(r"^emulator: (\S+)$", makefile, re.M)
    assert serve and emulator and serve.group(1) == emulator.group(1)
    stamp = serve.group(1).replace("$", r"\$").replace("(", r"\(").replace(")", r"\)")
    recipe = re.search(rf"^{stamp}: .*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, makefile
    installs = [line for line in recipe.group(1).splitlines() if "pip install" in line]
    assert installs[-1].strip().endswith("pip install --quiet -e ."), installs

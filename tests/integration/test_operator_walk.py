"""A careless operator's walk (session 9): every mistake ends in one line that names what is
wrong and which setting or limit, exit 1 or 2, never a traceback."""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.servers import free_port, nats_binary, wait_port

EXE = str(Path(sys.executable).parent / "controlplane")


def _run(
    tmp_path: Path, *argv: str, timeout: float = 30, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    clean.update(CONTROLPLANE_TOKENS="admin:operator-walk-token-0123456789", **env)
    return subprocess.run([EXE, *argv], env=clean, cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def _one_clear_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("controlplane:")]
    for word in words:
        assert word in line, (word, line)


@pytest.mark.timeout(60)
def test_serve_on_a_port_in_use_names_the_address_and_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run(tmp_path, "serve", "--listen", f"127.0.0.1:{port}")
    _one_clear_line(done, 1, f"127.0.0.1:{port}", "--listen", "already in use")
    assert "serving on" not in done.stdout  # the banner waits for the socket


@pytest.mark.timeout(60)
def test_serve_with_a_data_dir_it_cannot_create_names_it(tmp_path: Path) -> None:
    afile = tmp_path / "not-a-dir"
    afile.write_text("x")
    done = _run(tmp_path, "serve", "--listen", f"127.0.0.1:{free_port()}",
                "--data-dir", str(afile))  # fmt: skip
    _one_clear_line(done, 1, "--data-dir", str(afile), "not a directory")
    done = _run(tmp_path, "serve", "--listen", f"127.0.0.1:{free_port()}",
                CONTROLPLANE_DATA_DIR=str(afile / "below"))  # fmt: skip
    _one_clear_line(done, 1, "--data-dir", str(afile / "below"), "cannot create")


@pytest.mark.timeout(60)
def test_serve_with_a_missing_or_malformed_tokens_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "tokens.txt"
    done = _run(tmp_path, "serve", "--tokens-file", str(missing))
    _one_clear_line(done, 2, f"tokens file {missing}", "No such file")
    missing.write_text("admin secret-without-colon\n")
    done = _run(tmp_path, "serve", "--tokens-file", str(missing))
    _one_clear_line(done, 2, f"tokens file {missing}", "entry 1 must be role:token")
    assert "secret-without-colon" not in done.stderr + done.stdout


@pytest.mark.timeout(60)
def test_serve_with_a_missing_tls_file_names_that_file(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("x")
    done = _run(tmp_path, "serve", "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(key))
    _one_clear_line(done, 2, f"TLS file {tmp_path / 'nope.pem'} does not exist")


def test_sessions_ls_with_a_state_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    # was: "(none)", exit 0 — a typo'd state looked like an empty fleet
    done = _run(tmp_path, "sessions", "ls", "--state", "active", "--url", "http://127.0.0.1:9")
    assert done.returncode == 2, done.stderr
    assert "invalid choice: 'active'" in done.stderr and "synced" in done.stderr


def test_the_help_names_every_exit_code_docs_cli_md_lists() -> None:
    from controlplane.cli.main import build_parser

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    table = doc[doc.index("| code | meaning |") :].split("\n\n")[0]
    codes = [int(c) for c in re.findall(r"^\| (\d+) \|", table, re.M)]
    assert codes == [0, 1, 2, 3, 4, 5, 6, 130]
    text = " ".join(build_parser().format_help().split())
    for code in codes:  # each as "<code> <meaning>" ("0 ok", "3 rejected on ...")
        assert re.search(rf"[ :;,]{code} [a-z-]", text), (code, text)


@pytest.mark.timeout(60)
def test_an_unreachable_nats_is_said_once_then_named_with_its_limit(tmp_path: Path) -> None:
    # was: one "NATS: [Errno 111] Connect call failed" warning per second until the limit
    url = f"nats://127.0.0.1:{free_port()}"
    done = _run(tmp_path, "audit", "verify", "--nats-url", url,
                CONTROLPLANE_NATS_CONNECT_TIMEOUT_S="4")  # fmt: skip
    assert done.returncode == 1, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("NATS:")]
    assert len(said) == 1 and said[0].endswith("retrying for up to 4s"), done.stderr
    assert f"controlplane: cannot reach NATS at {url} within 4s" in done.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("setting", "words"),
    [("LT_PUBLISH_RATE=abc", "must be a number from 0 to 1000"),
     ("LT_PROMPT_CHARS=5000", "must be a whole number from 0 to 1750"),
     ("LT_SESSION_S=8-2", "must be seconds (0: held) or a range LOW-HIGH, 0 <= LOW <= HIGH"),
     ("LT_AUDIO=tone", "choose turns or silence")],
)  # fmt: skip
def test_a_bad_load_test_setting_stops_locust_naming_it(
    tmp_path: Path, setting: str, words: str
) -> None:
    # was: a ValueError traceback from the locustfile's import (or 422 at every publish)
    name, _, value = setting.partition("=")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LT_")}
    env.update({name: value, "LT_TOKEN": "x"})
    locust = str(Path(sys.executable).parent / "locust")
    locustfile = str(Path(__file__).resolve().parents[2] / "loadtest" / "locustfile.py")
    done = subprocess.run([locust, "-f", locustfile, "--headless", "-u", "1", "-t", "1s",
                           "--host", "http://127.0.0.1:9"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=50, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert f"{name}={value!r}: {words}" in done.stderr, done.stderr


@pytest.mark.parametrize("url", ["127.0.0.1:8090/v3/ws", "http://127.0.0.1:8090/v3/ws", "ws://"])
def test_an_upstream_url_that_is_not_a_websocket_url_is_refused_at_start(url: str) -> None:
    # was: accepted, then every call failed at connect (the Helm schema already said ws(s)://)
    from controlplane.config import Settings, SettingsError

    for name in ("CONTROLPLANE_UPSTREAM_STREAMING_URL", "CONTROLPLANE_UPSTREAM_AGENT_URL"):
        with pytest.raises(SettingsError, match=rf"\({name}\): '{re.escape(url)}' must be a ws"):
            Settings.from_env({name: url}).check()
    Settings.from_env({"CONTROLPLANE_UPSTREAM_AGENT_URL": "ws://127.0.0.1:8090/v1/ws"}).check()


def test_a_url_with_credentials_is_a_usage_error_without_echoing_them(tmp_path: Path) -> None:
    # was: "cannot reach control plane at http://127.0.0.1:9: Name or service not known"
    done = _run(tmp_path, "policy", "ls", "--url", "http://ops:s3cret@127.0.0.1:9")
    _one_clear_line(done, 2, "--url must not carry user:password@", "'http://127.0.0.1:9'")
    assert "s3cret" not in done.stderr + done.stdout


def test_an_answer_that_is_not_the_control_planes_says_so(tmp_path: Path) -> None:
    # was: "http_404 (HTTP 404): 404: Not Found", whatever answered on that port
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        done = _run(tmp_path, "policy", "ls", "--url", url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    _one_clear_line(done, 1, "(HTTP 501)", f"{url} is not a control plane", "--url")


PLACEHOLDERS = {"ID": "x", "A": "1", "B": "2", "N": "1", "S": "1", "SESSION": "x", "KEY": "k",
                "TIME": "2026-01-01T00:00:00Z", "T": "2026-01-01T00:00:00Z", "URL": "http://x:1",
                "FILE": "f.yaml", "DIR": "d", "F": "f", "PEM": "p.pem", "TEXT": "t"}  # fmt: skip


def _doc_commands() -> list[tuple[str, str]]:
    """Every ``controlplane …`` command the docs show, in backticks or on a code line."""
    root = Path(__file__).resolve().parents[2]
    paths = [*sorted((root / "docs").glob("*.md")), root / "README.md",
             root / "deploy" / "helm" / "controlplane" / "README.md"]  # fmt: skip
    found = []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            snippets = re.findall(r"`((?:\.venv/bin/)?controlplane [^`]+)`", line)
            bare = re.sub(r"^\s*\$ ", "", line).strip()
            if re.match(r"(\.venv/bin/)?controlplane \w", bare):
                snippets.append(bare)
            for snippet in snippets:
                found.append((f"{path.name}:{number}", snippet))
    return found


def _placeholder(arg: str) -> str:
    if not re.fullmatch(r"<[^>]+>", arg):
        return arg
    return "1" if "version" in arg else "x"  # <version> is a number, <id> a name


def test_every_controlplane_command_in_the_docs_parses() -> None:
    # the deploy.md runbook said `controlplane policy rollback <id>`, which needs --to N
    from controlplane.cli.main import build_parser

    parser, checked = build_parser(), 0
    for where, snippet in _doc_commands():
        command = re.split(r"\s+#|\s\|\s|\s>\s|\s&", snippet)[0].strip().rstrip("\\").strip()
        argv = shlex.split(re.sub(r"^\.venv/bin/", "", command))[1:]
        if len(argv) <= 2 or any(ch in command for ch in "[(…"):
            continue  # a mention ("`policy sign`") or a synopsis with [optional] parts
        argv = [PLACEHOLDERS.get(a, _placeholder(a)) for a in argv]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                parser.parse_args(argv)
            except SystemExit as exc:
                assert not exc.code, f"{where}: {snippet}\n{err.getvalue()}"
        checked += 1
    assert checked > 50


@pytest.mark.timeout(60)
def test_the_emulator_on_a_port_in_use_or_with_bad_faults_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run(tmp_path, "emulator", "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"emulator: cannot listen on 127.0.0.1:{port} (--listen):" in done.stderr
    assert "address already in use" in done.stderr
    done = _run(tmp_path, "emulator", "--faults", "{latency_ms: 5}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "--faults is not JSON: Expecting property name" in done.stderr


# Ctrl-C in a terminal: SIGINT at its default disposition. A shell starts background jobs (a CI
# run under `cmd &`, nohup) with SIGINT *ignored*, children inherit that, and Python then
# installs no KeyboardInterrupt handler: the command rightly ignores the signal and the test
# waited for it. So the command starts with SIGINT back at its default, as from a terminal.
_SIGINT_DEFAULT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.argv[1], sys.argv[1:])")  # fmt: skip


@pytest.mark.timeout(60)
def test_ctrl_c_in_any_command_exits_130_without_a_traceback(tmp_path: Path) -> None:
    # was: a KeyboardInterrupt traceback (e.g. audit verify --data-dir over a large log)
    with socket.socket() as silent:  # accepts, never answers: the command waits
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
        argv = [sys.executable, "-c", _SIGINT_DEFAULT, EXE, "policy", "ls", "--url", url]
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        try:
            silent.settimeout(30)
            connection, _ = silent.accept()  # it connected: parsed, and waiting for the answer
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
            connection.close()
        finally:
            if proc.poll() is None:  # (no pipe or process left behind for the next test)
                proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().endswith("controlplane: interrupted"), err


def test_a_token_read_from_a_crlf_file_works_and_a_bad_one_is_never_printed(
    tmp_path: Path,
) -> None:
    # a token file saved with CRLF gave "controlplane: Invalid header value b'Bearer <token>\r'"
    secret = "operator-walk-token-0123456789"
    port = free_port()
    server = subprocess.Popen([EXE, "serve", "--listen", f"127.0.0.1:{port}"], cwd=tmp_path,
                              env={**_clean_env(), "CONTROLPLANE_TOKENS": f"admin:{secret}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port, timeout=20)
        url = f"http://127.0.0.1:{port}"
        done = _run(tmp_path, "policy", "ls", "--url", url, CONTROLPLANE_TOKEN=f"{secret}\r\n")
        assert done.returncode == 0 and done.stdout.strip() == "(none)", done.stderr
        for bad in (f"{secret}\rx", f"Bearer {secret}", f"{secret[:5]} {secret[5:]}"):
            done = _run(tmp_path, "policy", "ls", "--url", url, CONTROLPLANE_TOKEN=bad)
            _one_clear_line(done, 2, "--token / CONTROLPLANE_TOKEN")
            assert secret[:8] not in done.stderr + done.stdout
    finally:
        server.terminate()
        server.wait(timeout=15)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}


def test_every_error_code_the_rest_api_answers_is_in_docs_api_md() -> None:
    # 503 backend_unavailable (Redis/NATS down) and parser_unavailable were in no table
    root = Path(__file__).resolve().parents[2]
    sources = [*(root / "controlplane" / "api").glob("*.py"),
               *(root / "controlplane" / "service").glob("*.py"),
               *(root / "controlplane" / "rollouts").glob("*.py"),
               root / "controlplane" / "errors.py"]  # fmt: skip
    found = (re.findall(r'code ?= ?"([a-z_]+)"', path.read_text()) for path in sources)
    codes = {code for codes_of_file in found for code in codes_of_file}
    api = (root / "docs" / "api.md").read_text()
    channel = (root / "docs" / "control-channel.md").read_text()
    missing = {c for c in codes if f"`{c}`" not in api and f"`{c}`" not in channel}
    assert len(codes) > 20 and missing == set(), "name these in docs/api.md's errors"


@pytest.mark.timeout(90)
def test_a_second_service_on_the_same_data_dir_is_refused_until_the_first_is_gone(
    tmp_path: Path,
) -> None:
    # two `serve` on one data dir both started and appended to one version log
    env = {**_clean_env(), "CONTROLPLANE_TOKENS": "admin:operator-walk-token-0123456789",
           "CONTROLPLANE_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    port = free_port()
    first = _serve(tmp_path, port, env)
    try:
        wait_port(port, timeout=20)
        done = _run(tmp_path, "serve", "--listen", f"127.0.0.1:{free_port()}",
                    CONTROLPLANE_DATA_DIR=str(tmp_path / "data"))  # fmt: skip
        _one_clear_line(done, 1, "--data-dir", "in use by another controlplane",
                        f"(pid {first.pid})")  # fmt: skip
    finally:
        first.kill()  # SIGKILL: the kernel releases the lock, the stale file stays
        first.wait(timeout=15)
    port = free_port()
    second = _serve(tmp_path, port, env)
    try:
        wait_port(port, timeout=20)
        assert second.poll() is None
    finally:
        second.terminate()
        second.wait(timeout=15)


def _serve(cwd: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([EXE, "serve", "--listen", f"127.0.0.1:{port}"], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.timeout(90)
def test_a_nats_server_without_jetstream_is_named_as_such(tmp_path: Path) -> None:
    # was: "nats: ServiceUnavailableError: code=None err_code=None description='None'"
    port = free_port()
    nats = subprocess.Popen([nats_binary(), "-p", str(port), "-a", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port, timeout=20)
        url = f"nats://127.0.0.1:{port}"
        done = _run(tmp_path, "serve", "--listen", f"127.0.0.1:{free_port()}", "--nats-url", url)
        _one_clear_line(done, 1, "cannot start", "JetStream is not enabled", "nats-server -js")
        done = _run(tmp_path, "audit", "verify", "--nats-url", url)
        _one_clear_line(done, 1, "reading CP_AUDIT", "JetStream is not enabled")
    finally:
        nats.terminate()
        nats.wait(timeout=15)


def test_controlplane_version_names_the_installed_release(tmp_path: Path) -> None:
    # a bug report or an image tag check had no way to ask ("the following arguments are
    # required: command")
    import importlib.metadata

    done = _run(tmp_path, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"controlplane {importlib.metadata.version('voice-controlplane')}"

"""Settings declared once (issue 22): flags, variables, validation, ``--help`` and the docs table
all come from the ``Settings`` fields; precedence is flags > environment > defaults."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from controlplane.cli import serve
from controlplane.cli.main import build_parser, main
from controlplane.config import GROUPS, SETTINGS, Settings, SettingsError, flag_values
from controlplane.config.__main__ import rewrite

ROOT = Path(__file__).resolve().parents[2]
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
CHART = ROOT / "deploy" / "helm" / "controlplane"
DOCS += [CHART / "README.md", CHART / "values.yaml", *sorted((CHART / "templates").glob("*.yaml"))]
# variables of the client commands (controlplane/cli/main.py), not of serve
CLIENT_VARIABLES = {"CONTROLPLANE_URL", "CONTROLPLANE_TOKEN"}
# variables of the compiled build (sessions/native.py, build_native.py, .ci/run), not of serve
CLIENT_VARIABLES |= {"CONTROLPLANE_PURE", "CONTROLPLANE_EXPECT_COMPILED"}
ENV = {spec.env: spec for spec in SETTINGS}
FLAGS = {spec.flag: spec for spec in SETTINGS if spec.flag}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def _settings(env: dict[str, str], *argv: str) -> Settings:
    return Settings.from_env(env, flags=flag_values(_args(*argv)))


def test_every_field_is_a_declared_setting_with_derived_names() -> None:
    assert [f.name for f in dataclasses.fields(Settings)] == [s.name for s in SETTINGS]
    for spec in SETTINGS:
        assert spec.env == "CONTROLPLANE_" + spec.name.upper()
        assert spec.help and spec.group in GROUPS
        assert (spec.flag is None) == spec.secret, spec.name  # secrets only as variables
    assert FLAGS["--audit-signing-key"].name == "audit_signing_key_file"  # the one renamed flag
    assert {s.name for s in SETTINGS if s.secret} == {"tokens", "policy_signing_key"}
    # the two settings nobody read are gone (issue 22)
    assert not {"push_queue_size", "next_turn_deadline_s"} & {s.name for s in SETTINGS}


@pytest.mark.parametrize(
    ("name", "flag", "env", "default", "from_env", "from_flag"),
    [
        ("max_connections", "--max-connections", "7", 20_000, 7, 9),
        ("readiness_lag_s", "--readiness-lag-s", "2.5", 10.0, 2.5, 0.5),
        ("data_dir", "--data-dir", "/var/e", Path("./data"), Path("/var/e"), Path("/f")),
        ("redis_prefix", "--redis-prefix", "e:", "cp:", "e:", "f:"),
        ("guard_on_breach", "--guard-on-breach", "rollback", "halt", "rollback", "halt"),
        ("nats_url", "--nats-url", "nats://e", None, "nats://e", "nats://f"),
    ],
)  # fmt: skip
def test_flags_win_over_the_environment_which_wins_over_defaults(
    name: str, flag: str, env: str, default: object, from_env: object, from_flag: object
) -> None:
    variable = "CONTROLPLANE_" + name.upper()
    assert getattr(_settings({}), name) == default
    assert getattr(_settings({variable: env}), name) == from_env
    assert getattr(_settings({variable: ""}), name) == default  # empty = unset
    given = str(from_flag)
    assert getattr(_settings({variable: env}, flag, given), name) == from_flag
    assert getattr(_settings({}, flag, given), name) == from_flag


def test_booleans_from_words_and_from_flag_pairs() -> None:
    assert _settings({}).guard_enabled is True
    assert _settings({"CONTROLPLANE_GUARD_ENABLED": "off"}).guard_enabled is False
    assert _settings({"CONTROLPLANE_GUARD_ENABLED": "0"}, "--guard-enabled").guard_enabled is True
    assert _settings({}, "--no-guard-enabled").guard_enabled is False
    env = {"CONTROLPLANE_WEBSOCKET_COMPRESSION": "yes"}
    assert _settings(env).websocket_compression is True
    assert _settings(env, "--no-websocket-compression").websocket_compression is False
    with pytest.raises(
        SettingsError, match="CONTROLPLANE_GUARD_ENABLED='maybe' is not a valid bool"
    ):
        _settings({"CONTROLPLANE_GUARD_ENABLED": "maybe"})


def test_secrets_come_from_the_environment_only_and_are_never_shown() -> None:
    settings = _settings({"CONTROLPLANE_TOKENS": "admin:t0ps3cret,viewer:v"})
    assert settings.tokens == {"t0ps3cret": "admin", "v": "viewer"}
    assert "t0ps3cret" not in repr(settings)
    with pytest.raises(SystemExit):
        _args("--tokens", "admin:x")
    with pytest.raises(SettingsError, match=r"tokens \(CONTROLPLANE_TOKENS\): token entry 1") as e:
        _settings({"CONTROLPLANE_TOKENS": "root:s3cret"})
    assert "s3cret" not in str(e.value)


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"CONTROLPLANE_MAX_CONNECTIONS": "0"}, (),
         "max_connections (CONTROLPLANE_MAX_CONNECTIONS) is 0: it must be at least 1"),
        ({"CONTROLPLANE_MAX_CONNECTIONS": "5"}, ("--max-connections", "0"),
         "max_connections (--max-connections) is 0: it must be at least 1"),
        ({}, ("--first-message-timeout-s", "61"), "first_message_timeout_s "
         "(--first-message-timeout-s) is 61.0: it must be above 0 and at most 60"),
        ({"CONTROLPLANE_NATS_REPLICAS": "2"}, (),
         "nats_replicas (CONTROLPLANE_NATS_REPLICAS) is 2: it must be one of 1, 3, 5"),
        ({"CONTROLPLANE_AGENT_PARTIAL_UPDATES": "some"}, (),
         "agent_partial_updates (CONTROLPLANE_AGENT_PARTIAL_UPDATES) is 'some': it must be "
         "one of reject_message, apply_rest"),
        ({"CONTROLPLANE_NATS_POLICY_STREAM": "CP.POLICY"}, (),
         "nats_policy_stream (CONTROLPLANE_NATS_POLICY_STREAM): 'CP.POLICY' is not a valid "
         "JetStream stream name"),
        ({}, ("--listen", "8080"),
         "listen (--listen): listen address '8080' must be host:port, e.g. 127.0.0.1:8080"),
        ({"CONTROLPLANE_SESSION_TTL_S": "ten"}, (),
         "CONTROLPLANE_SESSION_TTL_S='ten' is not a valid float"),
    ],
)  # fmt: skip
def test_a_bad_value_names_the_setting_and_where_it_came_from(
    env: dict[str, str], argv: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        _settings(env, *argv)
    assert str(refused.value) == message


def test_a_bad_value_built_in_code_names_both_its_flag_and_variable() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings(redis_pool_size=1).check()
    assert str(refused.value) == (
        "redis_pool_size (--redis-pool-size / CONTROLPLANE_REDIS_POOL_SIZE) is 1: "
        "it must be at least 2"
    )
    with pytest.raises(SettingsError, match=r"max_connections .* is '5': it must be a number"):
        Settings(max_connections="5").check()  # type: ignore[arg-type]
    Settings().check()  # the defaults are valid


def test_serve_refuses_a_bad_value_before_starting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTROLPLANE_READINESS_STALL_S", "1")
    assert main(["serve", "--max-connections", "20"]) == 2
    err = capsys.readouterr().err
    assert "readiness_stall_s (CONTROLPLANE_READINESS_STALL_S) is 1.0: it must be at least 3" in err
    assert main(["serve", "--max-connections", "many"]) == 2
    assert "argument --max-connections: 'many' is not a valid int" in capsys.readouterr().err


def test_serve_help_lists_every_setting_under_its_group(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    text = capsys.readouterr().out
    starts = [text.index(f"\n{group.title}:\n") for group in GROUPS]
    assert starts == sorted(starts)
    bounds = dict(zip(GROUPS, [*starts[1:], len(text)], strict=True))
    for spec in SETTINGS:
        section = text[text.index(f"\n{spec.group.title}:\n") : bounds[spec.group]]
        squeezed = " ".join(section.split())
        assert (spec.flag or spec.env) in squeezed, spec.name
        assert spec.env in squeezed.replace("- ", "-").replace(" ", ""), spec.name


def test_the_docs_table_is_generated_from_the_declarations() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert rewrite(page) == page, "run: python -m controlplane.config docs/configuration.md"
    for spec in SETTINGS:
        assert f"`{spec.env}`" in page


def test_documents_name_only_variables_and_flags_that_exist() -> None:
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for var in set(re.findall(r"CONTROLPLANE_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_])", text)):
            assert var in ENV or var in CLIENT_VARIABLES, f"{doc.name}: {var} is not a setting"
        for prefix in set(re.findall(r"(CONTROLPLANE_[A-Z0-9_]+_)\*", text)):
            assert any(v.startswith(prefix) for v in ENV), f"{doc.name}: {prefix}*"
        # a flag and a variable side by side must be one setting's pair
        for flag, var in re.findall(
            r"`(--[a-z0-9-]+)`[^`\n|]*\|?[^`\n|]*`(CONTROLPLANE_\w+)`", text
        ):
            if var in ENV and flag in FLAGS:
                assert FLAGS[flag].env == var, f"{doc.name}: {flag} is not {var}"


def test_every_setting_is_read_somewhere() -> None:
    """A setting nothing reads is dead weight in --help and the docs (issue 22 removed two)."""
    sources = [p for p in (ROOT / "controlplane").rglob("*.py") if "config" not in p.parts]
    code = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    guard = (ROOT / "controlplane" / "rollouts" / "guard.py").read_text(encoding="utf-8")
    for spec in SETTINGS:
        if spec.name.startswith("guard_"):  # GuardSpec.of: getattr(settings, "guard_" + name)
            assert '"guard_" + name' in guard and f'pick("{spec.name[6:]}")' in guard, spec.name
        else:
            assert re.search(rf"\b{spec.name}\b", code), f"nothing reads {spec.name}"


# flags of other tools that the docs quote (docker build, nats pub, schemathesis) and the
# placeholder spelling of a boolean's pair; docs/loadtest.md and benchmarks.md quote the
# benchmark scripts' own flags and are not checked
FOREIGN_FLAGS = {"--build-arg", "--no-templates", "--checks", "--name", "--no-name"}
FOREIGN_FLAGS |= {"--require", "--clean"}  # build_native.py's (the compiled build)


def _all_flags(parser: argparse.ArgumentParser) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:
        found.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _all_flags(sub)
    return found


def test_documents_quote_only_flags_that_exist() -> None:
    known = _all_flags(build_parser()) | FOREIGN_FLAGS
    for doc in DOCS:
        if doc.name in ("loadtest.md", "benchmarks.md"):
            continue
        quoted = set(re.findall(r"`(--[a-z][a-z0-9-]*)", doc.read_text(encoding="utf-8")))
        assert quoted <= known, f"{doc.name} quotes flags no command has: {quoted - known}"

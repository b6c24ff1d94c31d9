"""How one setting is declared, and everything derived from that one declaration.

A setting is a field of the frozen ``Settings`` dataclass whose default is ``setting(...)``:
its group, help, bounds and choices live in the field's metadata. From the field name come
its flag (``--name-with-dashes``) and its variable (``CONTROLPLANE_NAME``); from its type
annotation, how a string from either is converted. The argparse flags (``add_flags``), the
environment reading (``read_environment``), the per-setting validation (``problem``) and the
docs table (``markdown``) are all derived here, so adding a setting is one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.roles import parse_grant

__all__ = [
    "ENV_PREFIX",
    "ROLES",
    "Group",
    "Setting",
    "SettingsError",
    "add_flags",
    "declared",
    "flag_values",
    "markdown",
    "parse_listen",
    "parse_tokens",
    "problem",
    "read_environment",
    "setting",
]

ENV_PREFIX = "CONTROLPLANE_"
ROLES = ("viewer", "app", "experimenter", "compliance", "admin")
_KEY = "controlplane.setting"
_AUTO = "<derived>"


class SettingsError(ValueError):
    """A setting, or a combination of settings, that cannot work; the message says what to change
    and names the setting with the flag or variable it came from."""


@dataclass(frozen=True)
class Group:
    """A heading of ``serve --help`` and of the docs table."""

    title: str
    about: str


@dataclass(frozen=True)
class Setting:
    """One setting as declared: the ``Settings`` field ``name`` and what its metadata says."""

    name: str
    group: Group
    help: str
    default: object
    shown: str  # the default as a reader sees it ("hostname", "none", "8", "127.0.0.1:8080")
    literal: bool  # ``shown`` is the value itself, as typed (code in the docs)
    flag: str | None  # None: environment only (secrets are never flags)
    env: str
    convert: Callable[[str, str], object]  # (raw string, where it came from) -> value
    kind: str  # "int", "float", "bool", "path", "text", or a parser's own name
    choices: tuple[object, ...] = ()
    bounds: tuple[tuple[str, float], ...] = ()  # (">=", 1), ("<", 1.0) ...
    valid: Callable[[Any], object] | None = None  # raises ValueError naming what is wrong
    secret: bool = False
    doc: str = ""  # more words for the docs table only

    def origin(self, source: str | None) -> str:
        """``max_connections (--max-connections)`` / ``(CONTROLPLANE_…)`` / both when unknown."""
        where = source or " / ".join(n for n in (self.flag, self.env) if n)
        return f"{self.name} ({where})"

    def rule(self) -> str:
        words = {">=": "at least", ">": "above", "<=": "at most", "<": "below"}
        parts = [f"{words[op]} {_number(limit)}" for op, limit in self.bounds]
        if self.choices:
            parts.append("one of " + ", ".join(str(c) for c in self.choices))
        return " and ".join(parts)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    group: Group,
    help: str,
    factory: Callable[[], Any] | None = None,
    shown: str | None = None,
    flag: str | None = _AUTO,
    choices: Sequence[object] = (),
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    valid: Callable[[Any], object] | None = None,
    parse: Callable[[str, str], object] | None = None,
    secret: bool = False,
    doc: str = "",
) -> Any:
    """A ``Settings`` field: its default (or ``factory``) plus what ``declared`` derives from."""
    bounds = tuple(
        (op, limit)
        for op, limit in ((">=", ge), (">", gt), ("<=", le), ("<", lt))
        if limit is not None
    )
    meta = {
        _KEY: {
            "group": group, "help": help, "shown": shown, "flag": None if secret else flag,
            "choices": tuple(choices), "bounds": bounds, "valid": valid, "parse": parse,
            "secret": secret, "doc": doc,
        }
    }  # fmt: skip
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta, repr=not secret)
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


def declared(cls: type) -> tuple[Setting, ...]:
    """Every setting of the dataclass ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_KEY)
        if meta is None:
            continue
        kind, convert = _converter(hints[f.name], meta["parse"])
        default = f.default if f.default_factory is dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-") if meta["flag"] == _AUTO else meta["flag"]
        found.append(
            Setting(
                name=f.name, group=meta["group"], help=meta["help"], default=default,
                shown=meta["shown"] or _show(default), flag=flag,
                literal=isinstance(default, str | Path), env=ENV_PREFIX + f.name.upper(),
                convert=convert, kind=kind, choices=meta["choices"], bounds=meta["bounds"],
                valid=meta["valid"], secret=meta["secret"], doc=meta["doc"],
            )
        )  # fmt: skip
    return tuple(found)


def problem(spec: Setting, value: object, source: str | None = None) -> str | None:
    """Why ``value`` cannot be ``spec``'s value (naming the setting and ``source``), or None."""
    if value is None:
        return None
    ok = not spec.choices or value in spec.choices
    for op, limit in spec.bounds:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"{spec.origin(source)} is {value!r}: it must be a number"
        ok = ok and {">=": value >= limit, ">": value > limit, "<=": value <= limit,
                     "<": value < limit}[op]  # fmt: skip
    if not ok:
        return f"{spec.origin(source)} is {value!r}: it must be {spec.rule()}"
    if spec.valid is not None:
        try:
            spec.valid(value)
        except ValueError as exc:
            return f"{spec.origin(source)}: {exc}"
    return None


def read_environment(
    specs: Iterable[Setting], env: Mapping[str, str]
) -> tuple[dict[str, object], dict[str, str]]:
    """(values, where each came from) for every ``CONTROLPLANE_*`` variable set (non-empty)."""
    values: dict[str, object] = {}
    origins: dict[str, str] = {}
    for spec in specs:
        raw = env.get(spec.env)
        if raw is None or raw == "":
            continue
        values[spec.name] = spec.convert(raw, spec.env)
        origins[spec.name] = spec.env
    return values, origins


def add_flags(
    parser: argparse.ArgumentParser, specs: Iterable[Setting], names: Iterable[str] | None = None
) -> None:
    """One argparse group per settings group; every flag defaults to None (= not given)."""
    chosen = [s for s in specs if names is None or s.name in set(names)]
    groups: dict[Group, Any] = {}
    for spec in chosen:
        if spec.group not in groups:
            about = [spec.group.about] + [
                f"{s.env} (environment only): {s.help}"
                for s in chosen
                if s.group == spec.group and s.flag is None
            ]
            groups[spec.group] = parser.add_argument_group(spec.group.title, " ".join(about))
        if spec.flag is None:
            continue
        text = f"{spec.help} (default {spec.shown}; env {spec.env})".replace("%", "%%")
        if spec.kind == "bool":
            groups[spec.group].add_argument(
                spec.flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=None,
                help=text,
            )  # fmt: skip
            continue
        choices = [str(c) for c in spec.choices] if spec.kind == "text" and spec.choices else None
        groups[spec.group].add_argument(
            spec.flag,
            dest=spec.name,
            type=_flag_type(spec),
            default=None,
            help=text,
            choices=choices,
            metavar=None if choices else _metavar(spec),
        )


def flag_values(specs: Iterable[Setting], args: argparse.Namespace) -> dict[str, object]:
    """The flags given on the command line (the ones left None were not given)."""
    return {
        spec.name: getattr(args, spec.name)
        for spec in specs
        if spec.flag is not None and getattr(args, spec.name, None) is not None
    }


def markdown(specs: Sequence[Setting]) -> str:
    """The docs table: one ``###`` section per group, a row per setting."""
    lines: list[str] = []
    seen: list[Group] = []
    for spec in specs:
        if spec.group not in seen:
            seen.append(spec.group)
    for group in seen:
        lines += [f"### {group.title}", "", group.about, ""]
        lines += ["| flag | environment | default | meaning |", "|---|---|---|---|"]
        for spec in specs:
            if spec.group is not group:
                continue
            flag = f"`{spec.flag}`" if spec.flag else "(environment only)"
            if spec.kind == "bool" and spec.flag:
                flag = f"`{spec.flag}`, `--no-{spec.flag[2:]}`"
            meaning = spec.help + (f"; {spec.doc}" if spec.doc else "")
            if spec.bounds or spec.choices:
                meaning += f" ({spec.rule()})"
            shown = f"`{spec.shown}`" if spec.literal else spec.shown
            meaning = meaning.replace("<", "&lt;").replace("*", "\\*")
            lines.append(f"| {flag} | `{spec.env}` | {shown} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


# -- conversions -------------------------------------------------------------------------------


def _converter(
    hint: Any, parse: Callable[[str, str], object] | None
) -> tuple[str, Callable[[str, str], object]]:
    if parse is not None:
        return getattr(parse, "__name__", "value").lstrip("_"), parse
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        [hint] = [a for a in typing.get_args(hint) if a is not type(None)]
    table: dict[Any, tuple[str, Callable[[str], object]]] = {
        bool: ("bool", _bool), int: ("int", _ascii(int)), float: ("float", _ascii(float)),
        Path: ("path", Path), str: ("text", str),
    }  # fmt: skip
    kind, convert = table[hint]

    def from_string(raw: str, source: str) -> object:
        try:
            return convert(raw)
        except ValueError:
            raise SettingsError(f"{source}={raw!r} is not a valid {kind}") from None

    return kind, from_string


def _flag_type(spec: Setting) -> Callable[[str], object]:
    def convert(raw: str) -> object:
        try:
            return spec.convert(raw, spec.flag or spec.env)
        except ValueError as exc:  # argparse prints "argument --x: <this>"
            raise argparse.ArgumentTypeError(str(exc).replace(f"{spec.flag}=", "", 1)) from None

    convert.__name__ = spec.kind
    return convert


def _metavar(spec: Setting) -> str:
    if spec.kind == "float":
        return "S" if spec.name.endswith("_s") else "X"
    return {"int": "N", "path": "PATH", "text": "TEXT"}.get(spec.kind, spec.kind.upper())


def _ascii(kind: type[int] | type[float]) -> Callable[[str], object]:
    def convert(raw: str) -> object:
        if not raw.isascii():  # int() and float() also read '１０'
            raise ValueError(raw)
        return kind(raw)

    return convert


def _bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _number(limit: float) -> str:
    return f"{limit:,}" if isinstance(limit, int) else f"{limit:g}"


def _show(default: object) -> str:
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, Mapping):
        return "none" if not default else "…"
    return str(default)


# -- values with their own syntax --------------------------------------------------------------


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) -> (host, port); ValueError names the input."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise ValueError(f"listen address {value!r} must be host:port, e.g. 127.0.0.1:8080")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"listen port {number} is outside 0-65535")
    return host.strip("[]") or "127.0.0.1", number


def parse_tokens(value: str) -> dict[str, str]:
    """``role:token,role@team:token`` -> {token: role or role@team}; raises ValueError (never
    echoing the token). ``role@team[+team...]``: the team the token acts for and the teams it
    is granted (controlplane.roles.parse_grant, docs/security.md#teams)."""
    tokens: dict[str, str] = {}
    for i, item in enumerate(part.strip() for part in value.replace("\n", ",").split(",")):
        if not item or item.startswith("#"):
            continue
        role, sep, token = item.partition(":")
        role = role.strip()
        token = token.strip()
        if not sep or not token:
            raise ValueError(f"token entry {i + 1} must be role:token")
        if role.partition("@")[0] not in ROLES:  # never quoted: reversed, it is the token
            hint = " (reversed? write role:token)" if token in ROLES else ""
            raise ValueError(
                f"token entry {i + 1} has an unknown role{hint}; roles: {', '.join(ROLES)}"
            )
        try:
            parse_grant(role)
        except ValueError as exc:
            raise ValueError(f"token entry {i + 1}: {exc}") from None
        tokens[token] = role
    return tokens

"""Settings: one frozen object built from flags and ``CONTROLPLANE_*`` environment variables.

Flags win over the environment; the environment wins over defaults (DESIGN.md §4). Each
setting is declared once, as a field of ``Settings`` (``settings.py``) with its group, help,
default and limits; its flag, variable, conversion, validation and docs row are derived
(``schema.py``). Deployment modes (``Settings.check``; docs/distributed.md):

- no URL: embedded (memory registry, in-process bus, local JSONL audit);
- ``nats_url``: policies and durable audit through JetStream, each replica its own registry;
- ``nats_url`` + ``redis_url``: the full distributed mode (shared registry, owner routing);
- ``redis_url`` alone is refused: policies would not reach the other replicas.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from controlplane.config import schema
from controlplane.config.schema import (
    ENV_PREFIX,
    ROLES,
    Group,
    Setting,
    SettingsError,
    parse_listen,
    parse_tokens,
)
from controlplane.config.settings import GROUPS, SETTINGS, Settings

__all__ = [
    "ENV_PREFIX",
    "GROUPS",
    "ROLES",
    "SETTINGS",
    "Group",
    "Setting",
    "Settings",
    "SettingsError",
    "add_flags",
    "docs_table",
    "flag_values",
    "parse_listen",
    "parse_tokens",
]


def add_flags(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """A flag for every setting (or for ``names``), grouped as the settings are."""
    schema.add_flags(parser, SETTINGS, names)


def flag_values(args: argparse.Namespace) -> dict[str, object]:
    """The settings given as flags in ``args`` (pass to ``Settings.from_env(flags=...)``)."""
    return schema.flag_values(SETTINGS, args)


def docs_table() -> str:
    """docs/configuration.md's settings section (between its ``settings`` markers)."""
    return schema.markdown(SETTINGS)

"""Fixtures for the deployment-asset tests: the chart rendered through Helm's Go SDK.

Rendering and linting go through ``helm-python-sdk`` (import name ``helm_python``), which binds
Helm v4's Go SDK (``libhelm_c``) with ctypes: the same template engine, values coalescing
and ``values.schema.json`` validation as ``helm template`` / ``helm lint``, no binary needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = ROOT / "deploy" / "helm" / "controlplane"
PRODUCTION_VALUES = CHART_DIR / "ci" / "production-values.yaml"
RELEASE = "voice"
NAMESPACE = "voice-prod"

Manifest = dict[str, Any]


def load_values(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(values, dict), f"{path} is not a mapping"
    return values


def parse_manifests(rendered: dict[str, str]) -> list[Manifest]:
    """Every YAML document of every rendered template, minus NOTES.txt and empty ones."""
    objects: list[Manifest] = []
    for name, text in sorted(rendered.items()):
        if name.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            assert isinstance(doc, dict), f"{name}: a document is not a mapping"
            for field in ("apiVersion", "kind", "metadata"):
                assert field in doc, f"{name}: {doc.get('kind', '?')} has no {field}"
            assert doc["metadata"].get("name"), f"{name}: {doc['kind']} has no metadata.name"
            objects.append(doc)
    return objects


def by_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Manifest], kind: str) -> Manifest:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def production_values() -> dict[str, Any]:
    return load_values(PRODUCTION_VALUES)


@pytest.fixture(scope="session")
def default_render(chart: Any) -> dict[str, str]:
    rendered: dict[str, str] = chart.render(
        None, name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    return rendered


@pytest.fixture(scope="session")
def production_render(chart: Any, production_values: dict[str, Any]) -> dict[str, str]:
    rendered: dict[str, str] = chart.render(
        production_values, name=RELEASE, namespace=NAMESPACE, is_upgrade=True
    )
    return rendered


@pytest.fixture(scope="session")
def default_objects(default_render: dict[str, str]) -> list[Manifest]:
    return parse_manifests(default_render)


@pytest.fixture(scope="session")
def production_objects(production_render: dict[str, str]) -> list[Manifest]:
    return parse_manifests(production_render)

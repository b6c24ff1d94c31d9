"""The deployment docs describe the chart that exists: its values, numbers and commands."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.integration.deploy.conftest import CHART_DIR, ROOT

DEPLOY_DOC = ROOT / "docs" / "deploy.md"
CHART_README = CHART_DIR / "README.md"
DOTTED = re.compile(r"`([a-zA-Z][a-zA-Z0-9]*(?:\.[a-zA-Z0-9*]+)+)`")
# value trees handed to subcharts or free-form Kubernetes objects
PASSTHROUGH = {"nats", "redis", "global"}


def _resolve(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if part == "*":
            return isinstance(node, dict) and bool(node)
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("doc", [DEPLOY_DOC, CHART_README], ids=["docs/deploy.md", "README"])
def test_every_values_path_mentioned_exists(chart: Any, doc: Any) -> None:
    values = chart.values
    text = doc.read_text(encoding="utf-8")
    mentioned = {m for m in DOTTED.findall(text) if m.split(".")[0] in values}
    assert len(mentioned) >= 10, mentioned
    unknown = sorted(
        m for m in mentioned if m.split(".")[0] not in PASSTHROUGH and not _resolve(values, m)
    )
    assert unknown == [], f"{doc.name} documents values the chart does not have: {unknown}"
    for m in mentioned & {"nats.enabled", "redis.enabled"}:
        assert _resolve(values, m)


def test_chart_readme_covers_every_top_level_value(chart: Any) -> None:
    text = CHART_README.read_text(encoding="utf-8")
    missing = [key for key in chart.values if key != "global" and f"`{key}" not in text]
    assert missing == [], f"README does not mention: {missing}"


def test_documented_shutdown_numbers_match_the_defaults(chart: Any) -> None:
    shutdown = chart.values["shutdown"]
    grace = (
        shutdown["preStopSleepSeconds"] + shutdown["drainSeconds"] + shutdown["closeMarginSeconds"]
    )
    deregistration = shutdown["preStopSleepSeconds"] + shutdown["drainSeconds"]
    for doc in (DEPLOY_DOC, CHART_README):
        text = doc.read_text(encoding="utf-8")
        assert f"{grace} s" in text or f"{grace}s" in text or str(grace) in text, doc.name
        assert f"{deregistration} s" in text, doc.name
    assert f"{shutdown['drainSeconds']} s by default" in DEPLOY_DOC.read_text(encoding="utf-8")


def test_deploy_doc_has_install_lb_and_drain_sections() -> None:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    for needle in ("Build the image", "Install", "Values overview", "Load balancers", "Upgrades"):
        assert any(needle in h for h in headings), needle
    for command in (
        "helm dependency update deploy/helm/controlplane",
        "helm upgrade --install controlplane deploy/helm/controlplane",
        "-f deploy/helm/controlplane/ci/production-values.yaml",
        "kubectl apply -n monitoring -f deploy/prometheus/alerts.yaml",
        "deploy/grafana/controlplane.json",
    ):
        assert command in text, command
    assert "1012" in text and "CONTROLPLANE_SHUTDOWN_GRACE_S" in text


def test_chart_readme_documents_load_balancer_settings() -> None:
    flat = " ".join(CHART_README.read_text(encoding="utf-8").split())
    for needle in (
        "nginx.ingress.kubernetes.io/proxy-read-timeout",
        "nginx.ingress.kubernetes.io/proxy-send-timeout",
        "worker-shutdown-timeout",
        "idle_timeout.timeout_seconds",
        "deregistration_delay.timeout_seconds",
        "BackendConfig",
        "timeoutSec",
        "drainingTimeoutSec",
        "Sticky sessions: not needed",
        "Upgrade: websocket",
        "/readyz",
    ):
        assert needle in flat, needle

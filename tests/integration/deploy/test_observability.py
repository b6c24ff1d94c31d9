"""The Grafana dashboard and the alert rules only use metrics a running service exports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from controlplane.intake.bus import EventType
from tests.integration.deploy.conftest import ROOT
from tests.support.servers import free_port, wait_port

DASHBOARD = ROOT / "deploy" / "grafana" / "controlplane.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
METRIC_NAME = re.compile(r"\bcontrolplane_[a-z0-9_]*[a-z0-9]\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# DESIGN.md §4 names the dashboard must show, by what it answers.
DASHBOARD_MUST_SHOW = {
    "controlplane_sessions",
    "controlplane_push_latency_seconds_bucket",
    "controlplane_apply_latency_seconds_bucket",
    "controlplane_convergence_seconds_bucket",
    "controlplane_pushes_total",
    "controlplane_rejects_total",
    "controlplane_policy_events_total",
    "controlplane_audit_appends_total",
}
ALERTS_MUST_USE = {
    "controlplane_convergence_seconds_bucket",
    "controlplane_rejects_total",
    "controlplane_policy_events_total",
    "controlplane_audit_append_failures_total",
    "controlplane_ready",
}


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a real `controlplane serve` on embedded defaults."""
    port = free_port()
    exe = Path(sys.executable).parent / "controlplane"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    env["CONTROLPLANE_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    proc = subprocess.Popen(
        [str(exe), "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_port(port, timeout=20, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            proc.kill()
            output = proc.communicate(timeout=5)[0].decode(errors="replace")
            raise AssertionError(f"controlplane serve did not start: {exc}\n{output}") from exc
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    assert r.status == 200
                    text = r.read().decode()
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def exported_families(text: str) -> dict[str, str]:
    """name -> type from `# TYPE` lines (present for every registered metric, used or not)."""
    families: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            families[name] = kind
    return families


def sample_names(text: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def is_exported(name: str, families: dict[str, str], samples: set[str]) -> bool:
    if name in families or name in samples:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and families.get(base) in ("histogram", "summary"):
            return True
    return False


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    exprs.append(value)
                elif key == "query" and isinstance(value, str) and "controlplane_" in value:
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def names_in(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


def test_service_exports_the_design_metric_families(exposition: str) -> None:
    families = exported_families(exposition)
    assert families["controlplane_push_latency_seconds"] == "histogram"
    assert families["controlplane_pushes_total"] == "counter"
    assert families["controlplane_sessions"] == "gauge"
    assert "controlplane_ready" in sample_names(exposition)


def test_every_dashboard_metric_is_exported(exposition: str) -> None:
    exprs = dashboard_expressions()
    assert len(exprs) >= 20
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr
        assert expr.count("{") == expr.count("}"), expr
    used = names_in(exprs)
    assert DASHBOARD_MUST_SHOW <= used, DASHBOARD_MUST_SHOW - used
    families, samples = exported_families(exposition), sample_names(exposition)
    missing = sorted(n for n in used if not is_exported(n, families, samples))
    assert missing == [], f"dashboard uses metrics the service does not export: {missing}"


def test_every_alert_metric_is_exported(exposition: str) -> None:
    rules = alert_rules()
    exprs = [rule["expr"] for rule in rules]
    for expr in exprs:
        assert METRIC_NAME.search(expr), expr
        assert expr.count("(") == expr.count(")"), expr
    used = names_in(exprs)
    # names mentioned in summaries/descriptions must be real too
    text_names = set(METRIC_NAME.findall(ALERTS.read_text(encoding="utf-8")))
    assert ALERTS_MUST_USE <= used, ALERTS_MUST_USE - used
    families, samples = exported_families(exposition), sample_names(exposition)
    missing = sorted(n for n in used | text_names if not is_exported(n, families, samples))
    assert missing == [], f"alerts use metrics the service does not export: {missing}"


def test_histogram_quantiles_aggregate_by_le() -> None:
    exprs = dashboard_expressions() + [rule["expr"] for rule in alert_rules()]
    quantiles = [e for e in exprs if "histogram_quantile" in e]
    assert len(quantiles) >= 6
    for expr in quantiles:
        assert "_bucket" in expr, expr
        assert re.search(r"by \([^)]*\ble\b[^)]*\)", expr), f"no `by (le)`: {expr}"


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
    by_name = {rule["alert"]: rule for rule in rules}
    assert "changes(controlplane_ready" in by_name["ControlplaneReadinessFlapping"]["expr"]
    stalled = by_name["ControlplanePolicyConsumerStalled"]["expr"]
    assert "controlplane_policy_events_total" in stalled
    assert "controlplane_ready" in stalled
    failures = by_name["ControlplaneAuditAppendFailures"]
    assert "controlplane_audit_append_failures_total" in failures["expr"]
    assert failures["labels"]["severity"] == "critical"
    assert (
        "controlplane_convergence_seconds_bucket" in by_name["ControlplaneSlowConvergence"]["expr"]
    )
    assert "controlplane_rejects_total" in by_name["ControlplaneHighRejectRate"]["expr"]


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for needle in ("sessions by kind and state", "push latency", "apply latency", "convergence"):
        assert needle in titles


def markdown_anchors(text: str) -> set[str]:
    """GitHub-style anchors of the headings of a markdown file."""
    anchors: set[str] = set()
    for line in text.splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def test_every_alert_has_a_runbook_section_in_deploy_docs() -> None:
    anchors = markdown_anchors((ROOT / "docs" / "deploy.md").read_text(encoding="utf-8"))
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/deploy.md", rule["alert"]
        assert anchor == rule["alert"].lower() and anchor in anchors, (rule["alert"], url)


def test_dashboard_annotates_publishes_halts_and_rollbacks(exposition: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    by_name = {a["name"]: a for a in dashboard["annotations"]["list"] if not a.get("builtIn")}
    assert {"Publishes", "Halts", "Rollbacks"} <= set(by_name)
    families, samples = exported_families(exposition), sample_names(exposition)
    for annotation in by_name.values():
        expr = annotation["expr"]
        assert annotation["enable"] and annotation["datasource"]["uid"] == "${datasource}"
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        names = METRIC_NAME.findall(expr)
        assert names and all(is_exported(n, families, samples) for n in names), expr
    assert 'type="policy.published"' in by_name["Publishes"]["expr"]
    assert "controlplane_policy_events_total" in by_name["Publishes"]["expr"]
    assert "controlplane_rollout_halts_total" in by_name["Halts"]["expr"]
    assert 'action="rollback"' in by_name["Rollbacks"]["expr"]
    # the label values are the ones the service emits
    assert "policy.published" in get_args(EventType)
    assert '"rollback"' in (ROOT / "controlplane" / "rollouts" / "halts.py").read_text(
        encoding="utf-8"
    )

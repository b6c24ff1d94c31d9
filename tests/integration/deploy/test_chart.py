"""The Helm chart renders, lints and refuses bad values through Helm's own Go SDK."""

from __future__ import annotations

import base64
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from controlplane.config import ROLES, SETTINGS, Settings, parse_listen, parse_tokens
from tests.integration.deploy.conftest import (
    CHART_DIR,
    NAMESPACE,
    PRODUCTION_VALUES,
    RELEASE,
    Manifest,
    by_kind,
    load_values,
    one,
    parse_manifests,
)

FULLNAME = f"{RELEASE}-controlplane"
SCENARIOS = ["default", "production"]
# Every CONTROLPLANE_* variable Settings.from_env reads (controlplane/config/settings.py).
SETTINGS_ENV = {spec.env for spec in SETTINGS}
# The only lint finding allowed besides info: the optional subcharts are not vendored here.
MISSING_DEPENDENCIES = "chart directory is missing these dependencies: nats,redis"


@pytest.fixture(params=SCENARIOS)
def scenario(
    request: pytest.FixtureRequest,
    default_objects: list[Manifest],
    production_objects: list[Manifest],
    production_values: dict[str, Any],
) -> tuple[str, list[Manifest], dict[str, Any]]:
    if request.param == "default":
        return "default", default_objects, {}
    return "production", production_objects, production_values


def merged_values(chart: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = chart.merge_values(overrides or None)
    return merged


def container(objects: list[Manifest]) -> dict[str, Any]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    c: dict[str, Any] = pod["containers"][0]
    return c


def container_env(objects: list[Manifest]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(objects).get("env", [])}


def configmap_env(objects: list[Manifest]) -> dict[str, str]:
    c = container(objects)
    names = [src["configMapRef"]["name"] for src in c["envFrom"] if "configMapRef" in src]
    assert names == [FULLNAME]
    data: dict[str, str] = one(objects, "ConfigMap")["data"]
    return data


# --- the SDK is the real thing -------------------------------------------------------------


def test_helm_sdk_is_helm_v4_go_library() -> None:
    assert helm.helm_sdk_version().startswith("v4."), helm.helm_sdk_version()
    assert Path(helm.library_path).name.startswith("libhelm_c")  # bundled in the wheel


def test_chart_declares_optional_nats_and_redis_dependencies(chart: Any) -> None:
    deps = {d["name"]: d for d in chart.metadata["dependencies"]}
    assert set(deps) == {"nats", "redis"}
    assert deps["nats"]["condition"] == "nats.enabled"
    assert deps["redis"]["condition"] == "redis.enabled"
    assert chart.values["nats"]["enabled"] is False
    assert chart.values["redis"]["enabled"] is False
    statuses = {d["name"]: d["status"] for d in helm.dependency_list(CHART_DIR)}
    assert set(statuses.values()) <= {"missing", "ok"}, statuses


# --- lint -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, PRODUCTION_VALUES], ids=SCENARIOS)
def test_chart_passes_helm_lint(values_file: Path | None) -> None:
    values = load_values(values_file) if values_file else None
    report = helm.lint(CHART_DIR, values, namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    unexpected = [m for m in problems if m["error"] != MISSING_DEPENDENCIES]
    assert unexpected == [], unexpected


def test_lint_reports_schema_violations() -> None:
    report = helm.lint(CHART_DIR, {"replicaCount": "three"}, namespace=NAMESPACE)
    assert report["errors"], report
    assert any("/replicaCount" in e for e in report["errors"])


# --- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"replicaCount": "three"}, "/replicaCount"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"replicas": 3}, "'replicas'"),
        ({"shutdown": {"drainSecs": 60}}, "'drainSecs'"),
        ({"shutdown": {"drainSeconds": -1}}, "/shutdown/drainSeconds"),
        ({"service": {"type": "Ingress"}}, "/service/type"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"auth": {"tokens": [{"role": "root", "token": "x" * 32}]}}, "/auth/tokens/0/role"),
        ({"auth": {"tokens": [{"role": "admin", "token": "short"}]}}, "/auth/tokens/0/token"),
        ({"externalNats": {"url": "http://nats:4222"}}, "/externalNats/url"),
        ({"probes": {"readiness": {"path": "readyz"}}}, "/probes/readiness/path"),
    ],
    ids=[
        "replicaCount-string",
        "replicaCount-zero",
        "unknown-top-level-key",
        "unknown-nested-key",
        "negative-drain",
        "service-type-enum",
        "pull-policy-enum",
        "unknown-role",
        "short-token",
        "nats-url-scheme",
        "probe-path",
    ],
)
def test_schema_refuses_invalid_values(chart: Any, values: dict[str, Any], needle: str) -> None:
    with pytest.raises(helm.HelmValuesError) as validated:
        chart.validate_schema(values)
    assert needle in str(validated.value)
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_schema_accepts_defaults_and_production_values(
    chart: Any, production_values: dict[str, Any]
) -> None:
    chart.validate_schema(None)
    chart.validate_schema(production_values)


# Objects handed to subcharts or holding free-form Kubernetes structures stay open.
OPEN_OBJECTS = {
    "nats",
    "redis",
    "global",
    "podSecurityContext",
    "securityContext",
    "affinity",
    "behavior",
}


def _walk_schema(node: dict[str, Any], path: str, found: list[str]) -> None:
    for key, sub in node.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        if sub.get("type") == "object" and "properties" in sub and key not in OPEN_OBJECTS:
            if sub.get("additionalProperties") is not False:
                found.append(here)
            _walk_schema(sub, here, found)


def test_schema_is_strict_and_covers_every_default_value(chart: Any) -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["additionalProperties"] is False
    loose: list[str] = []
    _walk_schema(schema, "", loose)
    assert loose == [], f"objects without additionalProperties: false: {loose}"
    # every documented default is described by the schema (no key only values.yaml knows)
    assert set(chart.values) == set(schema["properties"])
    for key, value in chart.values.items():
        sub = schema["properties"][key]
        if isinstance(value, dict) and key not in OPEN_OBJECTS and "properties" in sub:
            assert set(value) <= set(sub["properties"]), key
    assert schema["properties"]["replicaCount"]["minimum"] == 1
    roles = schema["properties"]["auth"]["properties"]["tokens"]["items"]["properties"]["role"]
    assert tuple(roles["enum"]) == ROLES


# --- rendering ------------------------------------------------------------------------------


def test_default_render_kinds(default_objects: list[Manifest]) -> None:
    kinds = sorted(o["kind"] for o in default_objects)
    assert kinds == ["ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"]
    for obj in default_objects:
        assert obj["metadata"]["namespace"] == NAMESPACE


def test_production_render_kinds(production_objects: list[Manifest]) -> None:
    kinds = sorted(o["kind"] for o in production_objects)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    assert by_kind(production_objects, "Secret") == [], "existingSecret: the chart makes none"
    api = {o["kind"]: o["apiVersion"] for o in production_objects}
    assert api["HorizontalPodAutoscaler"] == "autoscaling/v2"
    assert api["PodDisruptionBudget"] == "policy/v1"
    assert api["NetworkPolicy"] == "networking.k8s.io/v1"
    assert api["ServiceMonitor"] == "monitoring.coreos.com/v1"


def test_probes_ports_and_service(
    scenario: tuple[str, list[Manifest], dict[str, Any]], chart: Any
) -> None:
    _, objects, overrides = scenario
    values = merged_values(chart, overrides)
    c = container(objects)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["args"] == ["serve"]
    service = one(objects, "Service")
    assert service["spec"]["sessionAffinity"] == "None"
    [port] = service["spec"]["ports"]  # HTTP and WebSocket share one port
    assert port["name"] == "http"
    assert port["targetPort"] == "http"
    assert port["port"] == values["service"]["port"]
    assert parse_listen(configmap_env(objects)["CONTROLPLANE_LISTEN"]) == ("0.0.0.0", 8080)


def test_pod_security(scenario: tuple[str, list[Manifest], dict[str, Any]]) -> None:
    _, objects, _ = scenario
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    sc = container(objects)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]


def test_writable_paths_are_empty_dirs(
    scenario: tuple[str, list[Manifest], dict[str, Any]],
) -> None:
    _, objects, _ = scenario
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container(objects)["volumeMounts"]}
    data_dir = configmap_env(objects)["CONTROLPLANE_DATA_DIR"]
    for path in (data_dir, "/tmp"):
        assert path in mounts, f"{path} is not mounted (read-only root filesystem)"
        volume = volumes[mounts[path]["name"]]
        assert "emptyDir" in volume, volume
        assert volume["emptyDir"].get("sizeLimit")


def test_settings_wiring_parses_with_the_real_settings(
    scenario: tuple[str, list[Manifest], dict[str, Any]], chart: Any
) -> None:
    name, objects, overrides = scenario
    values = merged_values(chart, overrides)
    data = configmap_env(objects)
    env = container_env(objects)
    for var in [*data, *env]:
        if var.startswith("CONTROLPLANE_"):
            assert var in SETTINGS_ENV, f"{var} is not a setting the service reads"
    # node id from the pod name (downward API)
    assert env["CONTROLPLANE_NODE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # feed the rendered plain settings to the real Settings parser
    plain = {k: v for k, v in data.items()}
    plain["CONTROLPLANE_NODE_ID"] = f"{FULLNAME}-7d9c-abcde"
    settings = Settings.from_env(plain)
    assert settings.node_id == f"{FULLNAME}-7d9c-abcde"
    assert settings.shutdown_grace_s == values["shutdown"]["drainSeconds"]
    assert settings.websocket_compression is False
    assert str(settings.data_dir) == values["dataDir"]["mountPath"]
    assert settings.upstream_streaming_url == "wss://streaming.assemblyai.com/v3/ws"
    # the tokens file is the Secret item mounted where CONTROLPLANE_TOKENS_FILE points
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    tokens_file = Path(data["CONTROLPLANE_TOKENS_FILE"])
    [mount] = [
        m for m in container(objects)["volumeMounts"] if Path(m["mountPath"]) == tokens_file.parent
    ]
    assert mount["readOnly"] is True
    assert "subPath" not in mount, "subPath mounts never see Secret rotation"
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["items"] == [{"key": values["auth"]["tokensKey"], "path": "tokens"}]
    assert tokens_file.name == "tokens"
    if name == "default":
        assert settings.nats_url is None and settings.redis_url is None  # embedded mode
        assert volume["secret"]["secretName"] == f"{FULLNAME}-tokens"
    else:
        assert volume["secret"]["secretName"] == "controlplane-secrets"
        assert settings.nats_url == "nats://nats.messaging.svc.cluster.local:4222"
        assert "CONTROLPLANE_REDIS_URL" not in data  # it carries a password
        assert env["CONTROLPLANE_REDIS_URL"]["valueFrom"] == {
            "secretKeyRef": {"name": "controlplane-secrets", "key": "redis-url"}
        }


def test_default_tokens_secret_holds_a_generated_admin_token(
    default_objects: list[Manifest],
) -> None:
    secret = one(default_objects, "Secret")
    assert secret["metadata"]["name"] == f"{FULLNAME}-tokens"
    text = base64.b64decode(secret["data"]["tokens"]).decode()
    tokens = parse_tokens(text)
    assert list(tokens.values()) == ["admin"]
    assert len(next(iter(tokens))) >= 32


def test_graceful_shutdown_is_sized_for_draining_calls(
    scenario: tuple[str, list[Manifest], dict[str, Any]], chart: Any
) -> None:
    _, objects, overrides = scenario
    shutdown = merged_values(chart, overrides)["shutdown"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    drain = float(configmap_env(objects)["CONTROLPLANE_SHUTDOWN_GRACE_S"])
    assert drain == shutdown["drainSeconds"] >= 60
    command = container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop == shutdown["preStopSleepSeconds"] > 0
    # the kubelet must not SIGKILL before preStop + drain + closing with 1012
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    strategy = one(objects, "Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0  # surge first, then drain


def test_production_scaling_and_policies(production_objects: list[Manifest]) -> None:
    deployment = one(production_objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= pod_labels.items()

    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(one(production_objects, "Service")["spec"]["selector"])

    hpa = one(production_objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] == 3
    assert hpa["maxReplicas"] >= 3
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300

    pdb = one(production_objects, "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 2
    assert "maxUnavailable" not in pdb
    assert selects(pdb["selector"]["matchLabels"])

    monitor = one(production_objects, "ServiceMonitor")
    service = one(production_objects, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    policy = one(production_objects, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"]["matchLabels"])
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule.get("ports", [])}
    assert {53, 443, 4222, 6379} <= egress_ports

    ingress = one(production_objects, "Ingress")["spec"]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}


def test_topology_spread_constraints_get_the_pod_selector(
    default_objects: list[Manifest], production_objects: list[Manifest]
) -> None:
    for objects, keys in (
        (default_objects, ["kubernetes.io/hostname"]),
        (production_objects, ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]),
    ):
        deployment = one(objects, "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert [c["topologyKey"] for c in spread] == keys
        for constraint in spread:
            assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()


def test_sleep_action_pre_stop(chart: Any) -> None:
    rendered = chart.render(
        {"shutdown": {"preStopMode": "sleepAction", "preStopSleepSeconds": 7}},
        name=RELEASE,
        namespace=NAMESPACE,
    )
    pre_stop = container(parse_manifests(rendered))["lifecycle"]["preStop"]
    assert pre_stop == {"sleep": {"seconds": 7}}


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"replicaCount": 3}, "shared NATS bus and Redis registry"),
        ({"autoscaling": {"enabled": True}}, "shared NATS bus and Redis registry"),
        ({"nats": {"enabled": True}}, "helm dependency update"),
        ({"redis": {"enabled": True}}, "helm dependency update"),
        ({"shutdown": {"terminationGracePeriodSeconds": 30}}, "SIGKILL"),
        (
            {
                "externalNats": {"url": "nats://a:4222"},
                "externalRedis": {"url": "redis://b:6379/0"},
                "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2},
            },
            "maxReplicas",
        ),
        (
            {"extraEnv": [{"name": "CONTROLPLANE_TOKENS", "value": "admin:plain-text"}]},
            "extraEnv CONTROLPLANE_TOKENS has a plain value",
        ),
    ],
    ids=[
        "replicas-without-shared-state",
        "hpa-without-shared-state",
        "nats-subchart-not-vendored",
        "redis-subchart-not-vendored",
        "grace-shorter-than-drain",
        "hpa-min-above-max",
        "plain-secret-in-extra-env",
    ],
)
def test_render_refuses_unsafe_combinations(
    chart: Any, values: dict[str, Any], needle: str
) -> None:
    with pytest.raises(helm.HelmRenderError) as refused:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert needle in str(refused.value)


def test_a_secret_in_extra_env_from_a_secret_ref_renders(chart: Any) -> None:
    ref = {"secretKeyRef": {"name": "signing", "key": "key"}}
    extra = [{"name": "CONTROLPLANE_POLICY_SIGNING_KEY", "valueFrom": ref},
             {"name": "CONTROLPLANE_ACK_TIMEOUT_S", "value": "3"}]  # fmt: skip
    objects = parse_manifests(chart.render({"extraEnv": extra}, name=RELEASE,
                                           namespace=NAMESPACE))  # fmt: skip
    env = container_env(objects)
    assert env["CONTROLPLANE_POLICY_SIGNING_KEY"]["valueFrom"] == ref
    assert env["CONTROLPLANE_ACK_TIMEOUT_S"]["value"] == "3"


def test_external_urls_from_secrets_and_plain_values(chart: Any) -> None:
    rendered = chart.render(
        {
            "replicaCount": 2,
            "externalNats": {"urlSecret": {"name": "bus", "key": "url"}},
            "externalRedis": {"url": "redis://redis.data.svc:6379/0"},
            "auth": {"tokens": [{"role": "viewer", "token": "v" * 24}]},
        },
        name=RELEASE,
        namespace=NAMESPACE,
    )
    objects = parse_manifests(rendered)
    data = configmap_env(objects)
    env = container_env(objects)
    assert "CONTROLPLANE_NATS_URL" not in data
    assert env["CONTROLPLANE_NATS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "bus",
        "key": "url",
    }
    assert data["CONTROLPLANE_REDIS_URL"] == "redis://redis.data.svc:6379/0"
    assert one(objects, "Deployment")["spec"]["replicas"] == 2
    secret = one(objects, "Secret")
    assert parse_tokens(base64.b64decode(secret["data"]["tokens"]).decode()) == {"v" * 24: "viewer"}


def test_notes_tell_how_to_reach_the_service(
    default_render: dict[str, str], production_render: dict[str, str]
) -> None:
    notes = default_render["controlplane/templates/NOTES.txt"]
    assert f"port-forward svc/{FULLNAME}" in notes
    assert "embedded" in notes
    command = next(line for line in notes.splitlines() if "get secret" in line)
    assert shlex.split(command.strip())[0] == "kubectl"
    notes = production_render["controlplane/templates/NOTES.txt"]
    assert "distributed" in notes
    assert "https://voice-cp.example.com/" in notes
    assert "640s" in notes  # 20 s preStop + 600 s drain + 20 s margin
    # the load balancer keeps the pod's connections through preStop AND the drain (the chart
    # README and docs/deploy.md say so; NOTES said the drain alone, 600s)
    assert "deregistration delay to at least 620s, preStop + drain" in notes


def test_notes_warn_when_the_image_is_the_example_placeholder(chart: Any) -> None:
    # the chart README's embedded install used the default image, which no node can pull
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)["controlplane/templates/NOTES.txt"]
    assert "WARNING: image.repository is the example registry.example.com/" in notes
    mine = {"image": {"repository": "ghcr.io/acme/controlplane", "tag": "0.1.0"}}
    notes = chart.render(mine, name=RELEASE, namespace=NAMESPACE)[
        "controlplane/templates/NOTES.txt"
    ]
    assert "WARNING" not in notes


def test_production_values_file_is_the_documented_shape() -> None:
    values = yaml.safe_load(PRODUCTION_VALUES.read_text(encoding="utf-8"))
    assert values["replicaCount"] == 3
    assert values["auth"]["existingSecret"]
    assert values["externalNats"]["url"].startswith("nats://")
    for feature in ("serviceMonitor", "autoscaling", "podDisruptionBudget", "networkPolicy"):
        assert values[feature]["enabled"] is True, feature


def test_subchart_wiring_when_nats_and_redis_are_vendored(tmp_path: Path) -> None:
    """With the subcharts present (stand-ins here: the real ones need `helm dependency
    update` and network), the service is pointed at the release's NATS and Redis."""
    copy = tmp_path / "controlplane"
    shutil.copytree(CHART_DIR, copy)
    for name, version in (("nats", "1.0.0"), ("redis", "21.0.0")):
        sub = copy / "charts" / name
        sub.mkdir(parents=True)
        (sub / "Chart.yaml").write_text(
            f"apiVersion: v2\nname: {name}\nversion: {version}\n", encoding="utf-8"
        )
    with helm.Chart.load(copy) as vendored:
        assert {d["name"] for d in vendored.dependencies} == {"nats", "redis"}
        rendered = vendored.render(
            {"replicaCount": 3, "nats": {"enabled": True}, "redis": {"enabled": True}},
            name=RELEASE,
            namespace=NAMESPACE,
        )
    objects = parse_manifests(rendered)
    data = configmap_env(objects)
    env = container_env(objects)
    assert data["CONTROLPLANE_NATS_URL"] == f"nats://{RELEASE}-nats:4222"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-redis",
        "key": "redis-password",
    }
    names = list(env)
    assert names.index("REDIS_PASSWORD") < names.index("CONTROLPLANE_REDIS_URL")
    assert env["CONTROLPLANE_REDIS_URL"]["value"] == (
        f"redis://:$(REDIS_PASSWORD)@{RELEASE}-redis-master:6379/0"
    )
    assert one(objects, "Deployment")["spec"]["replicas"] == 3


def test_tokens_may_name_a_team(chart: Any) -> None:
    tokens = [{"role": "experimenter", "team": "growth+search", "token": "e" * 24},
              {"role": "admin", "token": "a" * 24}]  # fmt: skip
    objects = parse_manifests(chart.render({"auth": {"tokens": tokens}}, name=RELEASE,
                                           namespace=NAMESPACE))  # fmt: skip
    text = base64.b64decode(one(objects, "Secret")["data"]["tokens"]).decode()
    assert parse_tokens(text) == {"e" * 24: "experimenter@growth+search", "a" * 24: "admin"}
    bad = [{"role": "experimenter", "team": "no spaces", "token": "e" * 24}]
    with pytest.raises(helm.HelmValuesError):
        chart.render({"auth": {"tokens": bad}}, name=RELEASE, namespace=NAMESPACE)

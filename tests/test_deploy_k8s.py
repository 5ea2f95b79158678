"""deploy/k8s: the manifests are valid Kubernetes objects that fit together and fit the gateway.

No cluster here: the objects are checked against the Kubernetes API schemas
(kubernetes-validate, strict), against each other (selectors, ports, names, mounts), and the
ConfigMap's gateway.toml is loaded by the gateway's own load_config, as a pod would load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import build_parser
from gateway.config import GatewayConfig, load_config

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
APP = {"app.kubernetes.io/name": "telemetry-gateway"}
# The schema check runs against the oldest Kubernetes still commonly run and the newest known.
K8S_VERSIONS = ("1.29.0", None)


def documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path, doc))
    return docs


def one(kind: str) -> dict[str, Any]:
    (found,) = [doc for _, doc in documents() if doc["kind"] == kind]
    return found


def pod_spec() -> dict[str, Any]:
    return one("StatefulSet")["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    return only


@pytest.fixture
def pod_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GatewayConfig:
    """The ConfigMap's gateway.toml, loaded as replica 0 loads it (client id from its name)."""
    path = tmp_path / "gateway.toml"
    path.write_text(one("ConfigMap")["data"]["gateway.toml"], encoding="utf-8")
    monkeypatch.setenv("GATEWAY_MQTT__CLIENT_ID", "telemetry-gateway-0")
    return load_config(path)


def test_every_document_parses_and_names_itself() -> None:
    docs = documents()
    assert {doc["kind"] for _, doc in docs} == {
        "ConfigMap",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "PodMonitor",
        "NetworkPolicy",
    }
    for path, doc in docs:
        assert doc.get("apiVersion"), path
        assert doc.get("kind"), path
        assert doc.get("metadata", {}).get("name"), path


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
def test_core_objects_match_the_kubernetes_api_schema(version: str | None) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install -e '.[dev]' (kubernetes-validate)"
    )
    version = version or kubernetes_validate.latest_version()
    checked = []
    for path, doc in documents():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema ships for it (checked by hand below)
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {exc.message} at {'.'.join(map(str, exc.path))}")
        checked.append(doc["kind"])
    assert len(checked) == 5


def test_the_configmap_config_loads_with_a_shared_subscription(pod_config: GatewayConfig) -> None:
    assert pod_config.mqtt.client_id == "telemetry-gateway-0", "the pod name wins over the file"
    (sub,) = pod_config.mqtt.subscriptions
    assert sub.effective_filter == "$share/gateways/sensors/+/+/telemetry"
    assert sub.qos == 1
    assert pod_config.http.host == "0.0.0.0"


def test_each_replica_is_its_own_client_with_its_own_volume(pod_config: GatewayConfig) -> None:
    (env,) = [e for e in container()["env"] if e["name"] == "GATEWAY_MQTT__CLIENT_ID"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (claim,) = one("StatefulSet")["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == str(pod_config.files.data_dir)


def test_the_container_runs_the_mounted_config() -> None:
    args = build_parser().parse_args(container()["args"])
    assert args.command == "run"
    (config_volume,) = [v for v in pod_spec()["volumes"] if v.get("configMap", {}).get("name")]
    assert config_volume["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    assert args.config.parent == Path(mounts[config_volume["name"]])
    assert args.config.name in one("ConfigMap")["data"]


def test_probes_and_ports_point_at_the_gateway_http_server(pod_config: GatewayConfig) -> None:
    (port,) = container()["ports"]
    assert port["containerPort"] == pod_config.http.port
    c = container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])


def test_termination_grace_outlasts_the_drain(pod_config: GatewayConfig) -> None:
    assert pod_spec()["terminationGracePeriodSeconds"] >= pod_config.shutdown_grace_s + 10


def test_runs_as_the_image_user_without_privileges() -> None:
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001, "the uid deploy/Dockerfile creates"
    assert security["fsGroup"] == 10001
    c = container()["securityContext"]
    assert c["allowPrivilegeEscalation"] is False
    assert c["readOnlyRootFilesystem"] is True
    assert c["capabilities"]["drop"] == ["ALL"]


def test_selectors_of_every_object_match_the_pods() -> None:
    statefulset = one("StatefulSet")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one("Service")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None", "a StatefulSet's governing Service is headless"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
        pod_labels.items()
    )
    assert one("PodMonitor")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    policy = one("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_labels.items() >= APP.items()


def test_only_the_metrics_port_is_open_and_only_to_the_monitoring_namespace(
    pod_config: GatewayConfig,
) -> None:
    """The pod binds 0.0.0.0 (Prometheus scrapes the pod IP): the NetworkPolicy narrows it."""
    assert pod_config.http.host == "0.0.0.0"
    policy = one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"], "egress (the broker) is not restricted"
    (rule,) = policy["ingress"]
    assert [p["port"] for p in rule["ports"]] == [p["name"] for p in container()["ports"]]
    (source,) = rule["from"]
    assert set(source) == {"namespaceSelector"}


def test_metrics_are_scraped_by_port_name_with_the_job_the_alerts_expect() -> None:
    port_names = {p["name"] for p in container()["ports"]}
    monitor = one("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"
    # alerts.yml selects up{job="telemetry-gateway"}: the job comes from this pod label.
    job_label = monitor["spec"]["jobLabel"]
    pod_labels = one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[job_label] == "telemetry-gateway"
    alerts = (K8S.parent / "prometheus" / "alerts.yml").read_text(encoding="utf-8")
    assert 'up{job="telemetry-gateway"}' in alerts
    service_ports = {p["name"]: p for p in one("Service")["spec"]["ports"]}
    assert service_ports["metrics"]["targetPort"] in port_names


def test_disruptions_take_one_replica_at_a_time() -> None:
    assert one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert one("StatefulSet")["spec"]["replicas"] >= 2

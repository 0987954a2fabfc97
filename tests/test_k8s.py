"""deploy/k8s: valid against the Kubernetes schemas offline, and consistent with the service."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from sklearn_service import config
from tests.serving import ROOT

K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
RESOURCES = {yaml.safe_load((K8S / name).read_text())["kind"]: yaml.safe_load((K8S / name).read_text())
             for name in KUSTOMIZATION["resources"]}
CUSTOM_KINDS = {"PodMonitor"}  # Prometheus Operator CRD: not in the Kubernetes schemas


@pytest.mark.parametrize("kind", sorted(set(RESOURCES) - CUSTOM_KINDS))
def test_resources_pass_strict_schema_validation(kind):
    kubernetes_validate.validate(RESOURCES[kind], "1.37.0", strict=True)


def test_kustomization_lists_every_manifest_and_names_the_image():
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(KUSTOMIZATION["resources"]) == on_disk
    container = RESOURCES["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].split(":")[0] == KUSTOMIZATION["images"][0]["name"]
    generated = {g["name"]: g for g in KUSTOMIZATION["configMapGenerator"]}
    model_tag = next(e for e in container["env"] if e["name"] == "MODEL_TAG")
    assert model_tag["valueFrom"]["configMapKeyRef"]["name"] in generated


def test_everything_selects_the_deployment_pods():
    labels = RESOURCES["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget", "PodMonitor"):
        spec = RESOURCES[kind]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind
    assert RESOURCES["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == RESOURCES["Deployment"]["metadata"]["name"]
    ports = {p["name"] for p in RESOURCES["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert RESOURCES["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] in ports
    assert RESOURCES["Service"]["spec"]["ports"][0]["targetPort"] in ports


def test_probes_security_and_grace_period_match_the_service():
    pod = RESOURCES["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = config.service("SklearnService")["traffic"]["timeout"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain  # accepted requests can finish


def test_podmonitor_scrapes_the_metrics_path():
    endpoint = RESOURCES["PodMonitor"]["spec"]["podMetricsEndpoints"][0]
    assert RESOURCES["PodMonitor"]["apiVersion"] == "monitoring.coreos.com/v1" and endpoint["path"] == "/metrics"


KSERVE = {doc["kind"]: doc for doc in (yaml.safe_load(p.read_text()) for p in sorted((K8S / "kserve").glob("*.yaml")))}


def test_kserve_runtime_container_is_a_valid_pod_container():
    """KServe's CRDs are not in the Kubernetes schemas: its container is checked as a Pod's."""
    container = KSERVE["ServingRuntime"]["spec"]["containers"][0]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, "1.37.0", strict=True)
    assert container["name"] == "kserve-container"  # the name KServe routes to
    assert container["image"].split(":")[0] == KUSTOMIZATION["images"][0]["newName"]
    port = container["ports"][0]["containerPort"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}


def test_inference_service_runs_the_runtime_on_the_v2_protocol():
    runtime, service = KSERVE["ServingRuntime"], KSERVE["InferenceService"]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and "v2" in runtime["spec"]["protocolVersions"]
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    env = {e["name"]: e for e in model["env"] + runtime["spec"]["containers"][0]["env"]}
    assert {"MODEL_TAG", "API_KEY"} <= env.keys()
    assert set(KSERVE) == {"ServingRuntime", "InferenceService"}

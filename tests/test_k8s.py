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

"""deploy/k8s: valid against the Kubernetes schemas offline, and consistent with the service."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import requests
import yaml

from harness.serving import ROOT, Server
from sklearn_service import config

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


CONTAINER = RESOURCES["Deployment"]["spec"]["template"]["spec"]["containers"][0]
EMPTY_DIRS = {v["name"] for v in RESOURCES["Deployment"]["spec"]["template"]["spec"]["volumes"] if "emptyDir" in v}
WRITABLE = {m["mountPath"] for m in CONTAINER["volumeMounts"] if m["name"] in EMPTY_DIRS}
UID = RESOURCES["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]


def test_root_filesystem_read_only_and_no_capabilities():
    security = CONTAINER["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]} and security["allowPrivilegeEscalation"] is False
    assert WRITABLE == {"/tmp"}  # what test_serves_with_only_the_declared_paths_writable grants


def files_owned_by(uid: int, folders) -> set[Path]:
    found = set()
    for folder in folders:
        for parent, dirs, files in os.walk(folder):  # other processes come and go: skip what vanishes
            for name in dirs + files:
                path = Path(parent, name)
                try:
                    if path.lstat().st_uid == uid:
                        found.add(path)
                except OSError:
                    pass
    return found


def interpreter_for_others() -> str:
    """This Python, or the same version elsewhere, at a path any user may execute (a venv may
    link to an interpreter under /root); the venv's packages come in through PYTHONPATH."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        path = Path(candidate)
        if path.exists() and all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents]):
            return candidate
    pytest.skip(f"no {version} that other users may execute")


@pytest.fixture
def request_cleanup():
    folders = []
    yield folders
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_serves_with_only_the_declared_paths_writable(bentoml_home, trained, cancer, request_cleanup):
    """The pod's user (runAsUser) serves from a project and model store it cannot write to; the
    manifest's emptyDir paths are the only places it may write (here: TMPDIR, owned by it). It
    answers, and afterwards it owns no file in any other place that user could write to."""
    tmp_path = Path(tempfile.mkdtemp(prefix="readonly-serve-"))  # pytest's own tmp is root's alone (0700)
    request_cleanup.append(tmp_path)
    home = tmp_path / "home"  # a copy of the store, readable by everyone, writable by no one but root
    shutil.copytree(bentoml_home / "models", home / "models")
    for name in ("bentos", "envs", "tmp"):  # BentoML creates these at start when missing
        (home / name).mkdir()
    writable = tmp_path / "writable-tmp"
    writable.mkdir()
    os.chown(writable, UID, UID)
    for path in [tmp_path, *tmp_path.rglob("*")]:
        if path != writable and writable not in path.parents:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert os.stat(ROOT).st_uid == 0 and not os.stat(ROOT).st_mode & 0o022  # the project: root's alone
    world_writable = ["/tmp", "/var/tmp", "/dev/shm"]
    owned_before = files_owned_by(UID, world_writable)
    env = {"BENTOML_HOME": str(home), "TMPDIR": str(writable), "HOME": str(home), "MODEL_TAG": trained["tag"]}
    prefix = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--",
              "env", f"PYTHONPATH={sysconfig.get_paths()['purelib']}", interpreter_for_others()]
    with Server(home, env=env, prefix=prefix, log=tmp_path / "serve.log") as srv:
        answer = requests.post(srv.url + "/predict", json={"features": cancer["X"][0].tolist()}, timeout=10)
        metrics = requests.get(srv.url + "/metrics", timeout=10)
        written_while_serving = {p for p in writable.rglob("*")}
        log = srv.log_path.read_text(errors="replace")
    assert answer.status_code == 200 and metrics.status_code == 200, log
    assert "PermissionError" not in log and "Read-only" not in log, log
    assert written_while_serving  # it did need a writable TMPDIR (metrics files)
    elsewhere = {p for p in files_owned_by(UID, world_writable) - owned_before if writable not in p.parents}
    assert not elsewhere, elsewhere


KSERVE_GRPC = {doc["kind"]: doc
               for doc in (yaml.safe_load(p.read_text()) for p in (K8S / "kserve-grpc").glob("*.yaml"))}


def test_grpc_port_is_the_services_and_kserve_grpc_variant_routes_to_it():
    grpc_port = config.app()["grpc"]["port"]
    container_ports = RESOURCES["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {p["name"]: p["containerPort"] for p in container_ports}["grpc"] == grpc_port
    service_port = next(p for p in RESOURCES["Service"]["spec"]["ports"] if p["name"] == "grpc")
    assert service_port["targetPort"] == "grpc" and service_port["appProtocol"] == "kubernetes.io/h2c"
    runtime, inference = KSERVE_GRPC["ServingRuntime"], KSERVE_GRPC["InferenceService"]
    container = runtime["spec"]["containers"][0]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, "1.37.0", strict=True)
    # h2c: the port name KServe routes gRPC to
    assert container["ports"] == [{"name": "h2c", "containerPort": grpc_port, "protocol": "TCP"}]
    assert container["readinessProbe"]["grpc"] == {"port": grpc_port}
    assert container["livenessProbe"]["grpc"] == {"port": grpc_port, "service": "liveness"}
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]
    model = inference["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "grpc-v2" and model["runtime"] == runtime["metadata"]["name"]

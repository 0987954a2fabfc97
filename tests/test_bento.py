"""`bentoml build` and `bentoml containerize` produce artifacts that really serve."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import requests

from harness.serving import BENTOML, ROOT, Server, free_port
from harness.serving import stop as stop_tree

BASE_IMAGE = "localhost/python:3.11-local"


def build_bento(home, tmp_path, base_image: str | None = None) -> str:
    bentofile = ROOT / "bentofile.yaml"
    if base_image:  # test-only build config: a base image made locally, since no registry can be pulled
        bentofile = tmp_path / "bentofile.yaml"
        bentofile.write_text((ROOT / "bentofile.yaml").read_text().replace(
            "\ndocker:\n", f"\ndocker:\n  base_image: {base_image}\n"))
    result = subprocess.run([BENTOML, "build", "-f", str(bentofile), "--output", "tag"], cwd=ROOT,
                            env={**os.environ, "BENTOML_HOME": str(home)}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


def assert_serves_seed_contract_and_batch(url: str, trained, cancer) -> None:
    row = cancer["X"][0]
    answer = requests.post(url + "/predict", json={"features": row.tolist()}, timeout=10)
    assert answer.json() == {"prediction": float(trained["pipeline"].predict([row])[0])}
    batch = requests.post(url + "/predict_batch", json={"instances": cancer["X"][:50].tolist()}, timeout=10)
    assert batch.json()["predictions"] == trained["pipeline"].predict(cancer["X"][:50]).astype(float).tolist()
    assert requests.get(url + "/metadata", timeout=10).json()["tag"] == trained["tag"]


def test_bento_from_the_store_serves_the_packed_model(tmp_path, bentoml_home, trained, cancer):
    tag = build_bento(bentoml_home, tmp_path)
    assert tag.startswith("sklearn-service:")
    info = subprocess.run([BENTOML, "get", tag, "-o", "json"], capture_output=True, text=True, check=True,
                          env={**os.environ, "BENTOML_HOME": str(bentoml_home)}).stdout
    assert trained["tag"] in info and '"SERVICE_CONFIG"' in info
    elsewhere = tmp_path / "elsewhere"  # not the source folder: everything must come from the bento
    elsewhere.mkdir()
    with Server(bentoml_home, target=tag, cwd=elsewhere) as server:
        assert_serves_seed_contract_and_batch(server.url, trained, cancer)


IMAGE_TOOLS = ("buildah", "podman", "debootstrap")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in IMAGE_TOOLS),
                    reason="needs root and buildah, podman, debootstrap (make system-deps)")
def test_containerized_image_serves_as_non_root(tmp_path, bentoml_home, trained, cancer):
    subprocess.run(["bash", str(ROOT / "scripts" / "make-base-image.sh")], check=True, timeout=600)
    tag = build_bento(bentoml_home, tmp_path, base_image=BASE_IMAGE)
    image = f"localhost/sklearn-service-test:{tag.split(':')[1]}"
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BUILDAH_ISOLATION": "chroot"}
    built = subprocess.run([BENTOML, "containerize", tag, "--backend", "buildah", "-t", image],
                           env=env, capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    container = subprocess.run(["buildah", "from", image], env=env, capture_output=True, text=True,
                               check=True).stdout.strip()
    port = free_port()
    log = open(tmp_path / "image-server.log", "wb")
    server = subprocess.Popen(
        ["buildah", "run", "--isolation", "chroot", "--network", "host", container, "--",
         "./env/docker/entrypoint.sh", "serve", "--port", str(port)],  # the image's own entrypoint
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert server.poll() is None, "the image's server exited:\n" + \
                (tmp_path / "image-server.log").read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        assert_serves_seed_contract_and_batch(url, trained, cancer)
        serving = [line.split(None, 1) for line in subprocess.run(
            ["ps", "-eo", "uid=,args="], capture_output=True, text=True).stdout.splitlines()
            if f"--port {port}" in line and "bentoml serve" in line and "buildah" not in line]
        assert serving and all(uid != "0" for uid, _ in serving), serving  # not root inside the image
        size = subprocess.run(["buildah", "images", "--format", "{{.Size}}", image],
                              capture_output=True, text=True).stdout.strip()
        print(f"\nimage {image}: {size}")
    finally:
        stop_tree(server, 30)  # the image's processes are buildah's children, in no group of its own
        log.close()
        subprocess.run(["buildah", "rm", container], capture_output=True)
        subprocess.run(["buildah", "rmi", image], capture_output=True)

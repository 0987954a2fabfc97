"""`bentoml build` and `bentoml containerize` produce artifacts that really serve."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from harness.serving import BENTOML, ROOT, Server, free_port, repo_bentofile
from harness.serving import stop as stop_tree
from sklearn_service.model_store import save_to_store

BASE_IMAGE = "localhost/python:3.11-local"


SECOND = "bento_second"  # a second model packed beside the default one


@pytest.fixture(scope="module")
def models(trained) -> str:
    """MODELS for the bento: the default model and a second one (the same pipeline under another name)."""
    second = save_to_store(trained["pipeline"], trained["metadata"], SECOND)
    return f"{trained['tag']},{second.tag}"


def build_bento(home, tmp_path, models: str, base_image: str | None = None) -> str:
    """The bento `make build` makes for these MODELS: it packs them and serves them wherever it runs."""
    env = {**os.environ, "BENTOML_HOME": str(home), "MODELS": models}
    with repo_bentofile():
        made = subprocess.run([sys.executable, "-m", "sklearn_service.bento_extras"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        bentofile = Path(made.stdout.strip())
        if base_image:  # test-only build config: a base image made locally, since no registry can be pulled
            bentofile, source = tmp_path / "bentofile.yaml", bentofile
            bentofile.write_text(source.read_text().replace("\ndocker:\n", f"\ndocker:\n  base_image: {base_image}\n"))
        result = subprocess.run([BENTOML, "build", "-f", str(bentofile), "--output", "tag"], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


def assert_serves_seed_contract_and_batch(url: str, trained, cancer) -> None:
    row = cancer["X"][0]
    answer = requests.post(url + "/predict", json={"features": row.tolist()}, timeout=10)
    assert answer.json() == {"prediction": float(trained["pipeline"].predict([row])[0])}
    batch = requests.post(url + "/predict_batch", json={"instances": cancer["X"][:50].tolist()}, timeout=10)
    assert batch.json()["predictions"] == trained["pipeline"].predict(cancer["X"][:50]).astype(float).tolist()
    assert requests.get(url + "/metadata", timeout=10).json()["tag"] == trained["tag"]
    # every configured model: the second one too, on its own routes
    assert [m["name"] for m in requests.get(url + "/models", timeout=10).json()["models"]] == ["sklearn_model", SECOND]
    second = requests.post(f"{url}/models/{SECOND}/predict_batch", json={"instances": cancer["X"][:50].tolist()},
                           timeout=10)
    assert second.json()["predictions"] == trained["pipeline"].predict(cancer["X"][:50]).astype(float).tolist()


def test_bento_from_the_store_serves_the_packed_models(tmp_path, bentoml_home, trained, models, cancer):
    tag = build_bento(bentoml_home, tmp_path, models)
    assert tag.startswith("sklearn-service:")
    info = subprocess.run([BENTOML, "get", tag, "-o", "json"], capture_output=True, text=True, check=True,
                          env={**os.environ, "BENTOML_HOME": str(bentoml_home)}).stdout
    assert all(model in info for model in models.split(",")) and '"SERVICE_CONFIG"' in info
    elsewhere = tmp_path / "elsewhere"  # not the source folder: everything must come from the bento
    elsewhere.mkdir()
    # the image sets MODELS from the bento's envs (test_containerized_image_...); `bentoml serve` of a bento does not
    with Server(bentoml_home, target=tag, cwd=elsewhere, env={"MODELS": models}) as server:
        assert_serves_seed_contract_and_batch(server.url, trained, cancer)


IMAGE_TOOLS = ("buildah", "podman", "debootstrap")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in IMAGE_TOOLS),
                    reason="needs root and buildah, podman, debootstrap (make system-deps)")
def test_containerized_image_serves_as_non_root(tmp_path, bentoml_home, trained, models, cancer):
    subprocess.run(["bash", str(ROOT / "scripts" / "make-base-image.sh")], check=True, timeout=600)
    tag = build_bento(bentoml_home, tmp_path, models, base_image=BASE_IMAGE)
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

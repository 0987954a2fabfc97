"""configuration.yaml drives the served behaviour: a changed value changes what the server does."""

from __future__ import annotations

import requests

from harness.serving import Server, write_config
from sklearn_service import config


def test_shipped_configuration_is_valid_for_bentoml():
    from bentoml._internal.configuration.containers import BentoMLConfiguration

    # the same merge and schema check BentoML applies to decorator configuration
    services = {name: config.service(name) for name in ("SklearnService", "ModelRunner")}
    merged = BentoMLConfiguration(override_defaults={"services": services}, use_version=2).to_dict()
    assert merged["services"]["SklearnService"]["traffic"]["timeout"] == services["SklearnService"]["traffic"]["timeout"]


def test_changed_values_change_the_served_behaviour(tmp_path, bentoml_home, trained, cancer):
    payload_logs = tmp_path / "payload"

    def change(settings):
        api = settings["services"]["SklearnService"]
        settings["app"]["max_batch_rows"] = 3
        api["http"] = {"cors": {"enabled": True, "access_control_allow_origins": ["https://app.example"]}}
        api["logging"]["access"]["enabled"] = True
        api["monitoring"]["options"]["log_path"] = str(payload_logs)

    path = write_config(tmp_path, change)
    with Server(bentoml_home, env={"SERVICE_CONFIG": str(path)}) as server:
        rows = cancer["X"][:4].tolist()
        assert requests.post(server.url + "/predict_batch", json={"instances": rows[:3]}, timeout=10).ok
        refused = requests.post(server.url + "/predict_batch", json={"instances": rows}, timeout=10)
        assert refused.status_code == 413 and "at most 3 instances" in refused.json()["error"]
        cors = requests.get(server.url + "/metadata", headers={"Origin": "https://app.example"}, timeout=10)
        assert cors.headers.get("access-control-allow-origin") == "https://app.example"
    assert "path=/predict_batch" in server.log() and "status=413" in server.log()  # access log switched on
    assert not payload_logs.exists()  # payload logging stays off unless configured on


def test_settings_a_file_leaves_out_fall_back_to_the_defaults(tmp_path, monkeypatch):
    path = tmp_path / "partial.yaml"
    path.write_text("app:\n  max_batch_rows: 7\n  auth:\n    protect_metrics: true\n  drift:\n    enabled: false\n")
    monkeypatch.setenv("SERVICE_CONFIG", str(path))
    config.load.cache_clear()
    try:
        settings = config.app()
    finally:
        config.load.cache_clear()
    assert settings["max_batch_rows"] == 7 and settings["max_queued_rows"] == config.APP_DEFAULTS["max_queued_rows"]
    assert settings["auth"] == {"api_key": None, "protect_metrics": True}
    assert settings["drift"] == {**config.APP_DEFAULTS["drift"], "enabled": False}


def test_the_shipped_file_states_the_same_defaults_the_code_falls_back_to():
    shipped = config.load()["app"]
    assert {key: shipped[key] for key in config.APP_DEFAULTS} == config.APP_DEFAULTS

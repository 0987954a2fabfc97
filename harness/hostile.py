"""Hostile input for any endpoint: arbitrary JSON, the settings for such runs, what a clear answer
is, and OpenAPI fuzzing of a running service."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import requests
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=40) | st.dictionaries(st.text(max_size=20), inner, max_size=40),
    max_leaves=120)
HOSTILE = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_clear_client_answer(response: requests.Response) -> None:
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400 and response.status_code != 405:
        body = response.json()
        assert isinstance(body, dict) and body.get("error"), body


def fuzz_openapi(url: str, tmp_path: Path) -> None:
    """schemathesis generates requests from the service's own OpenAPI document (its CLI: the
    pytest plugin does not support this pytest)."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", url + "/docs.json",
         "--checks", "not_a_server_error", "--max-examples", "60", "--no-color", "--seed", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)  # its cache goes there
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"\d+ generated, \d+ passed", result.stdout), result.stdout[-1000:]

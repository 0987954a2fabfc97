"""The suite's worker processes (pytest-xdist, as `make test` runs them): tests/conftest.py puts the tests
of one server in one xdist group, and a group must run on one worker, or every worker starts that
server again (pytest 9.2 ignores the node id xdist 3.8 writes a group into)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

CONFTEST = """
import pytest

@pytest.hookimpl(tryfirst=True)  # as tests/conftest.py adds its groups: from a hook, before xdist's
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "grouped" in item.nodeid:
            item.add_marker(pytest.mark.xdist_group("one-server"))
"""

TESTS = """
import pytest

@pytest.mark.parametrize("n", range(8))
def test_grouped(n):
    pass

@pytest.mark.parametrize("n", range(8))
def test_alone(n):
    pass
"""


def test_a_group_runs_on_one_worker(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_groups.py").write_text(textwrap.dedent(TESTS))
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "--no-loadscope-reorder",
                           "-v", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = re.findall(r"\[(gw\d)\].* PASSED \S+::(test_\w+)\[\d+\](\S*)", done.stdout)
    assert len(ran) == 16, done.stdout[-3000:]
    grouped = [(worker, group) for worker, test, group in ran if test == "test_grouped"]
    assert {group for _, group in grouped} == {"@one-server"}, ran  # xdist's own mark of a grouped test
    assert len({worker for worker, _ in grouped}) == 1, ran
    assert all(group == "" for _, test, group in ran if test == "test_alone"), ran

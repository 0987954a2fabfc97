"""Fixes for other libraries' internals, applied when service.py is imported; one module per patched library.

This package owns what every fix shares: the Fix type, the version guard, `apply()` and `status()`,
and the skip list (`app.skip_fixes` in configuration.yaml). Each fix names the releases of the
package it patches that it was written for and checked against (`versions`), and those of every
other package whose internals it relies on (`also`); at start-up a fix outside them is skipped with
a warning rather than patched blindly into code that may have changed. tests/test_bentoml_fixes.py
shows each bug on the unpatched code, so after an upgrade those tests say which fixes are still needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as installed_version

from packaging.specifiers import SpecifierSet

from sklearn_service import config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fix:
    name: str
    package: str   # the distribution whose internals it patches
    versions: str  # PEP 440 specifier: the releases it was written for and checked against
    install: Callable[[], None]
    also: tuple[tuple[str, str], ...] = ()  # (package, versions) of other code it relies on, guarded alike


# The modules import Fix from here, so they come after it.
from sklearn_service.patches import bentoml, kantoku, prometheus_client, uvicorn  # noqa: E402

# In this order: drain_without_resets (uvicorn) wraps the arbiter's stop as entry_service_stops_first
# (kantoku) left it; within bentoml, client errors are filtered before server errors are rate-limited.
FIXES = [*bentoml.FIXES, *kantoku.FIXES, *uvicorn.FIXES, *prometheus_client.FIXES]

# The code each fix replaces, kept so that tests can show the bug on it.
ORIGINAL = {**bentoml.ORIGINAL, **kantoku.ORIGINAL, **uvicorn.ORIGINAL, **prometheus_client.ORIGINAL}

_status: dict[str, str] = {}  # name -> "applied" or why not; each fix is installed once per process


def status(fix: Fix, skip: frozenset[str]) -> str:
    if fix.name in skip:
        return "skipped: listed in app.skip_fixes"
    for package, versions in ((fix.package, fix.versions), *fix.also):
        found = installed_version(package)
        if found not in SpecifierSet(versions):
            return f"skipped: written for {package} {versions}, installed {found}; see tests/test_bentoml_fixes.py"
    return "applied"


def apply() -> dict[str, str]:
    """Installs every fix that fits the installed versions; returns each fix's status."""
    skip = frozenset(config.app()["skip_fixes"])
    for fix in FIXES:
        if fix.name in _status:
            continue
        _status[fix.name] = status(fix, skip)
        if _status[fix.name] == "applied":
            fix.install()
            logger.debug("fix %s applied", fix.name)
        else:
            logger.warning("fix %s %s", fix.name, _status[fix.name])
    return dict(_status)

"""Debian's chromium as the tests drive it, headless or through Playwright."""

from __future__ import annotations

import shutil

CHROMIUM = shutil.which("chromium")
# no connection leaves the machine: the page's assets are served by BentoML itself
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=10000"]
# the same, for Playwright's launch (it adds --headless itself)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

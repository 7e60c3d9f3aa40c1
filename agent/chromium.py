"""Launching the system Chromium with Playwright.

Playwright's own browser download cannot run here, so every browser in the project (the
agent's `BrowserEnv`, the data engine's renderer, the demo's browser tests) is Debian's
`chromium` started through `executable_path`. The networking flags matter: without them
Chromium keeps trying to reach update and sync hosts that this network refuses.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
)


def chromium_path() -> str:
    """The Chromium binary: $CHROMIUM_PATH, else the first of chromium / chromium-browser on PATH."""
    candidates = [os.environ.get("CHROMIUM_PATH"), shutil.which("chromium"), shutil.which("chromium-browser")]
    for path in candidates:
        if path and os.path.exists(path):
            return path
    raise FileNotFoundError(
        "no Chromium found: install Debian's `chromium` package (./run.sh setup does) "
        "or set CHROMIUM_PATH to a Chromium binary")


def launch_chromium(playwright: Any, *, headless: bool = True, args: tuple[str, ...] = ()) -> Any:
    """`playwright.chromium.launch(...)` on the system Chromium with the flags this machine needs."""
    return playwright.chromium.launch(
        executable_path=chromium_path(), headless=headless, args=[*CHROMIUM_ARGS, *args])

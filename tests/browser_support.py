"""Debian's Chromium, driven by Playwright, as the page's tests and bench/page_load.py use it."""

from __future__ import annotations

import os
from typing import Any

#: Debian's package (``apt-get install chromium``; .ci/run installs it).
CHROMIUM = os.environ.get("WATCHD_CHROMIUM", "/usr/bin/chromium")


def launch(driver: Any) -> Any:
    """Headless Chromium that talks to nobody but the pages it opens. Playwright gives each
    launch a fresh profile of its own (a temp folder it removes), so none is passed."""
    return driver.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )

"""Debian's Chromium, driven by Playwright, as the page's tests and bench/page_load.py use it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Debian's package (``apt-get install chromium``; .ci/run installs it).
CHROMIUM = os.environ.get("WATCHD_CHROMIUM", "/usr/bin/chromium")


def launch(driver: Any, profile: Path) -> Any:
    """Headless Chromium with a fresh profile that talks to nobody but the pages it opens."""
    return driver.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
        ],
    )

"""The docs are part of the feature: they must match what the code accepts."""

from __future__ import annotations

import re
from pathlib import Path

from watchd import config
from watchd.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_config_example_parses() -> None:
    loaded = load_config(ROOT / "config.example.toml")
    assert [w.name for w in loaded.watches] == ["photos", "products", "portraits", "scans"]
    products, portraits, scans = loaded.watches[1:]
    assert (products.output.format, products.output.background) == ("jpeg", "#ffffff")
    assert (portraits.model, portraits.priority) == ("u2net_human_seg", 10)
    assert scans.output.format == "mask"
    assert loaded.http is not None
    assert loaded.http.listen == (("127.0.0.1", 8765),)


def test_config_example_documents_every_key() -> None:
    text = (ROOT / "config.example.toml").read_text()
    tables = {
        "daemon": config._DAEMON_KEYS,
        "pool": config._POOL_KEYS,
        "watch": config._WATCH_KEYS,
        "http": config._HTTP_KEYS,
    }
    for table, keys in tables.items():
        for key in keys:
            # set or shown commented out, each with a comment above it
            assert re.search(rf"^#? ?{re.escape(key)} = ", text, re.MULTILINE), (table, key)


def test_readme_quick_start_is_exactly_make_run_and_make_test() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make run", "make test"]

"""Shared fixtures: real photos, the real model, and the real daemon as a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support import DaemonProcess, write_config
from watchd.models import ModelStore


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks taken from what a test uses, so the fast loop (``make unit``) cannot miss one:
    asking for ``daemon_factory`` starts the real daemon (``e2e``); asking for
    ``model_store`` (directly or through another fixture) uses the real model (``model``)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "daemon_factory" in names:
            item.add_marker(pytest.mark.e2e)
        if "model_store" in names:
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def model_store() -> ModelStore:
    """rembg's own model folder, where ``make test`` put u2netp (pulled here if missing)."""
    store = ModelStore(None)
    try:
        store.verify("u2netp")
    except Exception:
        store.pull("u2netp")
    return store


@pytest.fixture
def fresh_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as a new worker (no sessions loaded); the worker globals other tests
    rely on are restored afterwards."""
    from watchd.pool import worker

    monkeypatch.setattr(worker, "_sessions", None)
    yield


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photos shipped by scikit-image, saved in the formats people drop."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    sources = {
        "astronaut.jpg": (data.astronaut(), "JPEG"),
        "coffee.png": (data.coffee(), "PNG"),
        "chelsea.webp": (data.chelsea(), "WEBP"),
        "rocket.jpg": (data.rocket(), "JPEG"),
        "cat.png": (data.cat(), "PNG"),
        "hubble.jpg": (data.hubble_deep_field(), "JPEG"),
    }
    paths = {}
    for name, (pixels, fmt) in sources.items():
        path = folder / name
        Image.fromarray(pixels).save(path, fmt, quality=92)
        paths[name] = path
    return paths


@pytest.fixture
def daemon_factory(
    tmp_path: Path, model_store: ModelStore
) -> Iterator[Callable[..., DaemonProcess]]:
    """Build (not start) a daemon rooted in ``tmp_path``; every one is stopped at teardown."""
    made: list[DaemonProcess] = []

    def make(**overrides: Any) -> DaemonProcess:
        process = DaemonProcess(tmp_path, write_config(tmp_path, model_store, **overrides))
        made.append(process)
        return process

    yield make
    for process in made:
        if process.proc is not None and process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(timeout=30)

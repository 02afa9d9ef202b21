"""Modules imported on first use, for the short-lived ``watchd`` CLI commands.

``watchd status`` is called by scripts and health checks, often every few seconds, so its
start-up is the CLI's cost (issue 17: under 80 ms). It shares modules with the daemon
(``control`` holds both the server and the client), and the daemon's heavy imports would
otherwise be paid by every CLI call. :func:`lazy_module` is the standard library's own
recipe (:class:`importlib.util.LazyLoader`): the module object exists at once, its code
runs at the first attribute access.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """``name`` as a module whose code runs on first use (already imported: that module)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module

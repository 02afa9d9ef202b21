"""The kinds of value people give watchd, checked one way wherever they come from.

A config file, a sidecar, a ``WATCHD_*`` variable (watchd/config.py), a control request
(watchd/control.py) and an HTTP request (watchd/http/options.py) all take integers in a
range, finite numbers, choices, booleans, non-empty strings, model names, priorities
and colours. The checks live here once, so the same value is accepted or refused
alike at every door: ``true`` is never the integer 1, ``nan`` and an integer of 4,000
digits never pass a range check. Each door wraps :class:`~watchd.errors.BadValue` in
its own words (config names the file and the key; the control protocol answers
``bad_request`` naming the argument).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Final

from watchd.errors import BadValue

#: A job's priority: a watch's, a sidecar's, ``submit --priority``, ``POST /queue/submit``.
MIN_PRIORITY: Final = -100
MAX_PRIORITY: Final = 100
#: A model's name (what :class:`watchd.models.ModelStore` stores as ``<name>.onnx``): no
#: path, no suffix, not hidden, so ``"/etc/passwd"`` or ``"../../x"`` is never a model.
MODEL_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
MODEL_SUFFIX: Final = ".onnx"
#: A colour as ``#rrggbb`` (a watch's ``background``, the HTTP ``background`` option).
COLOR_PATTERN: Final = r"#[0-9a-fA-F]{6}"
#: The choices of the output keys ``format``, ``crop`` and ``align``: the configuration, a
#: sidecar and ``watchd submit`` (whose CLI must not import the configuration) offer these.
FORMATS: Final = ("png", "webp", "jpeg", "mask")
CROPS: Final = ("none", "subject")
ALIGNS: Final = ("center", "bottom")


def shown(value: Any) -> str:
    """``repr(value)`` cut short, whatever it is (a sidecar may hold an integer of 4,000
    digits, which Python will not even turn into text, or a string of 60 KiB)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def described(value: Any) -> str:
    """The value's type and a short form of it, for "expected X, got <this>"."""
    return f"{type(value).__name__} {shown(value)}"


def integer(value: Any, minimum: int, maximum: int | None = None) -> int:
    """An integer (not a boolean) from ``minimum`` to ``maximum`` (None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadValue(f"expected an integer, got {described(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise BadValue(f"must be at least {minimum}{upper}, got {shown(value)}")
    return value


def number(value: Any, minimum: float, maximum: float | None = None) -> float:
    """A finite number (an integer or a float, not a boolean) in the range, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadValue(f"expected a number, got {described(value)}")
    try:
        finite = math.isfinite(value)  # nan passes every range check; inf overflows waits
    except OverflowError:  # an integer too large for a float: out of any range
        finite = False
    if not finite:
        raise BadValue(f"expected a finite number, got {shown(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum:g}" if maximum is not None else ""
        raise BadValue(f"must be at least {minimum:g}{upper}, got {shown(value)}")
    return float(value)


def choice(value: Any, options: Sequence[str]) -> str:
    """One of ``options``, exactly."""
    if not isinstance(value, str) or value not in options:
        raise BadValue(f"must be one of {', '.join(repr(o) for o in options)}, got {shown(value)}")
    return value


def boolean(value: Any) -> bool:
    """``true`` or ``false``; never 0, 1 or ``"yes"``."""
    if not isinstance(value, bool):
        raise BadValue(f"expected true or false, got {described(value)}")
    return value


def string(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise BadValue(f"expected a non-empty string, got {described(value)}")
    return value


def is_model_name(name: str) -> bool:
    """Whether ``name`` may name a model (see :data:`MODEL_NAME_RE`)."""
    return MODEL_NAME_RE.fullmatch(name) is not None and not name.endswith(MODEL_SUFFIX)

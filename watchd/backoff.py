"""How long to wait before trying again: one exponential backoff with jitter for all of watchd.

Webhook deliveries (watchd/hooks.py) and files whose output could not be written or
whose pool broke (the dispatcher) retry after the same kind of wait: doubling from
``base`` up to ``cap``, times a random factor in [0.5, 1.5), so that many things that
failed together (a receiver down, a full disk) do not all come back in the same second.
The random source is a parameter, so tests pin it.
"""

from __future__ import annotations

import random

#: The first wait and the longest one, in seconds (docs/reliability.md).
BACKOFF_BASE = 1.0
BACKOFF_MAX = 300.0
#: Doublings beyond this change nothing (2**30 s is decades) and would only risk overflow.
_MAX_DOUBLINGS = 30


def backoff_delay(
    retry: int, rng: random.Random, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX
) -> float:
    """Seconds before retry number ``retry`` (1 = the first retry): ``base``, doubling with
    each retry up to ``cap``, times a jitter factor in [0.5, 1.5)."""
    delay: float = min(cap, base * 2.0 ** min(max(retry - 1, 0), _MAX_DOUBLINGS))
    return delay * (0.5 + rng.random())

"""The one backoff of watchd (webhook retries, write errors, a broken pool)."""

from __future__ import annotations

import random

import pytest

from watchd.backoff import backoff_delay


def test_backoff_is_exponential_capped_and_jittered() -> None:
    class Fixed(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def random(self) -> float:
            return self.value

    middle = Fixed(0.5)
    assert [backoff_delay(n, middle, 1.0, 300.0) for n in range(1, 11)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        300,
    ]
    assert backoff_delay(3, Fixed(0.0), 1.0, 300.0) == 2.0  # x0.5
    assert backoff_delay(3, Fixed(0.999), 1.0, 300.0) == pytest.approx(5.996)  # x1.5
    assert backoff_delay(1000, middle, 1.0, 300.0) == 300

"""A function for rate-limit tests on process pools: workers import it by name (like
``workers.py``, a module of its own so that importing it runs no test code)."""

from __future__ import annotations

import time


def start_then_sleep(x: int, first: float = 0.6, rest: float = 0.01) -> float:
    """When the call started (``time.time()``: comparable across processes); the first
    item sleeps ``first`` seconds, the others ``rest``."""
    started = time.time()
    time.sleep(first if x == 0 else rest)
    return started

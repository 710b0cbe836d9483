"""mypy run in a process of its own, for the tests that check the types it infers.

``mypy.api.run`` in the suite's process left mypy's trees and types behind (430,000
objects after ``test_compose.py``'s check): every later full garbage collection took
0.5-1 s instead of 60 ms (the traced model property, which collects once per example,
ran 80 s instead of 8), and the collector's rule for a full collection (when the objects
new since the last one pass a quarter of the old) let the cyclic garbage of a long run
pile up for longer (``test_memory.py`` saw its peak double with the input's length).
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def mypy(*args: str) -> tuple[str, int]:
    """``mypy --strict --no-incremental *args``: its report, and its exit status."""
    pytest.importorskip("mypy")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout + done.stderr, done.returncode

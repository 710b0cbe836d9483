"""Run every script in examples/ as a user would, and check it exits cleanly.

Each example asserts its own expected output, so a regression makes it exit non-zero.
New examples are picked up automatically.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# Signs of a run that "worked" but leaked tasks, coroutines or exceptions.
FORBIDDEN_IN_STDERR = ("Task was destroyed", "was never awaited", "Traceback")


def test_examples_exist() -> None:
    assert EXAMPLES, "no examples found in examples/"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    # The checkout's conveyor, as ``python examples/x.py`` from it would import an installed
    # one (sys.path[0] is examples/): the same thing under nox's ``pip install -e .``.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=pythonpath),
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, f"{path.name} exited with {proc.returncode}\n{report}"
    for marker in FORBIDDEN_IN_STDERR:
        assert marker not in proc.stderr, f"{path.name}: {marker!r} in stderr\n{report}"
    assert proc.stdout.strip(), f"{path.name} printed nothing\n{report}"

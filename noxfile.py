"""Developer tasks: nox -s tests | tests_uvloop | lint | typecheck | docs | doctests | bench |
bench_merge.

``tests`` and ``tests_uvloop`` run on every interpreter of PYTHONS that is installed
(``nox -s tests-3.14`` picks one); a missing interpreter is skipped locally and an error
under CI (the CI environment variable set). ``../shared/tools/install-python 3.14``
installs an extra interpreter; put its folder first on PATH.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

PYTHONS = ["3.11", "3.13", "3.14", "3.15"]
BENCH_PYTHONS = ["3.11", "3.14"]
BENCH_DIR = Path(__file__).resolve().parent / "benchmarks"

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))


def _pytest(session: nox.Session, loop: str) -> None:
    session.install("-e", ".[test]")
    # With arguments, a selection may match no test (pytest's exit code 5): not a failure.
    success_codes = [0, 5] if session.posargs else [0]
    session.run(
        "pytest",
        *session.posargs,
        env={"CONVEYOR_TEST_LOOP": loop},
        success_codes=success_codes,
    )


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole test suite on asyncio's loop: unit, model, cancellation, memory, docs, examples.

    ``nox -s tests -- -m "not slow"`` leaves out the long-running tests.
    """
    _pytest(session, "asyncio")


@nox.session(python=PYTHONS)
def tests_uvloop(session: nox.Session) -> None:
    """The test suite with the async tests on uvloop (CONVEYOR_TEST_LOOP=uvloop), but for
    the long-running tests (``slow``: the thorough properties, the million-item memory
    test, the byte-bound sweeps), which run on asyncio's loop in ``tests``: they check
    the engine's rules, the same on either loop, and CI's budget has room for them once
    per interpreter."""
    if not session.posargs:
        session.posargs.extend(["-m", "not slow"])
    _pytest(session, "uvloop")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    # The optional features' packages too: their types are checked against the real ones
    # (uvloop: conveyor.run imports it; prometheus-client ships types; numpy's are used).
    session.install("-e", ".[fast,progress,prometheus,parquet]", "mypy")
    session.run("mypy", "--strict", "conveyor")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs.yml) into build/site; any warning fails it.

    The site works offline: the build takes mermaid.js from its npm package (pinned, its
    sha256 checked; kept in build/npm after the first download) and fails if any file of
    the site still names a CDN (docs/_ext/offline.py, a hook of mkdocs.yml).

    ``nox -s docs -- --site-dir DIR`` builds elsewhere; ``mkdocs serve`` (with
    ``pip install -e ".[docs]"``) previews it.
    """
    session.install("-e", ".[docs]")
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        "build/site",
        *session.posargs,
        env={"NO_MKDOCS_2_WARNING": "1"},  # Material's notice on every build
    )


@nox.session
def doctests(session: nox.Session) -> None:
    """Run every code block of README.md and docs/ (includes expanded) and every example."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/test_docs.py", "tests/test_examples.py", *session.posargs)


@nox.session(python=BENCH_PYTHONS)
def bench(session: nox.Session) -> None:
    """The benchmark suite on one interpreter, then benchmarks/RESULTS.md from all of them.

    ``nox -s bench`` runs on 3.11 and 3.14 in turn: each run writes
    benchmarks/results-<python>.md, and benchmarks/RESULTS.md is rebuilt after each from the
    results-<python>.md files of BENCH_PYTHONS there are (one table per interpreter).
    ``nox -s bench-3.14 -- --quick --only overhead`` passes options on to the suite.
    """
    session.install("-e", ".[bench]")
    output = BENCH_DIR / f"results-{session.python}.md"
    session.run("python", "-m", "benchmarks", "--output", str(output), *session.posargs)
    if not any(arg.startswith("--output") for arg in session.posargs):
        _merge(session)


@nox.session(python=False)
def bench_merge(session: nox.Session) -> None:
    """Rebuild benchmarks/RESULTS.md from the benchmarks/results-<python>.md files."""
    _merge(session)


def _merge(session: nox.Session) -> None:
    parts = [BENCH_DIR / f"results-{v}.md" for v in BENCH_PYTHONS]
    found = [str(p) for p in parts if p.exists()]
    if not found:
        session.error("no benchmarks/results-<python>.md to merge: run nox -s bench first")
    session.run(
        "python", "-m", "benchmarks.merge", *found, "--output", str(BENCH_DIR / "RESULTS.md")
    )

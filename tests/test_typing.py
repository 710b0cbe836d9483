"""Pipelines are generic: mypy --strict knows what ``pipeline(items)`` yields."""

from __future__ import annotations

from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

SAMPLE = Path(__file__).parent / "typing" / "pipeline_types.py"


def test_mypy_infers_pipeline_types() -> None:
    stdout, stderr, status = api.run(["--strict", "--no-incremental", str(SAMPLE)])
    assert status == 0, stdout + stderr


def test_a_wrong_expectation_is_caught() -> None:
    """The check above can fail: a wrong assert_type is reported."""
    wrong = SAMPLE.read_text().replace("Pipeline[str, str]", "Pipeline[str, int]")
    stdout, _, status = api.run(["--strict", "--no-incremental", "-c", wrong])
    assert status == 1 and "[assert-type]" in stdout


def test_failure_is_in_the_type_after_an_emit_stage() -> None:
    """The check can fail: without ``| Failure`` the emit pipeline's type is wrong."""
    text = SAMPLE.read_text()
    assert "Pipeline[Any, str | Failure[Any]]" in text
    wrong = text.replace("Pipeline[Any, str | Failure[Any]]", "Pipeline[Any, str]")
    stdout, _, status = api.run(["--strict", "--no-incremental", "-c", wrong])
    assert status == 1 and "[assert-type]" in stdout

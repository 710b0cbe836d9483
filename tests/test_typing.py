"""Pipelines are generic: mypy --strict knows what ``pipeline(items)`` yields."""

from __future__ import annotations

from pathlib import Path

from mypy_run import mypy

SAMPLE = Path(__file__).parent / "typing" / "pipeline_types.py"


def test_mypy_infers_pipeline_types() -> None:
    report, status = mypy(str(SAMPLE))
    assert status == 0, report


def test_a_wrong_expectation_is_caught() -> None:
    """The check above can fail: a wrong assert_type is reported."""
    wrong = SAMPLE.read_text().replace("Pipeline[str, str]", "Pipeline[str, int]")
    report, status = mypy("-c", wrong)
    assert status == 1 and "[assert-type]" in report


def test_failure_is_in_the_type_after_an_emit_stage() -> None:
    """The check can fail: without ``| Failure`` the emit pipeline's type is wrong."""
    text = SAMPLE.read_text()
    assert "Pipeline[Any, str | Failure[Any]]" in text
    wrong = text.replace("Pipeline[Any, str | Failure[Any]]", "Pipeline[Any, str]")
    report, status = mypy("-c", wrong)
    assert status == 1 and "[assert-type]" in report

"""Invalid arguments fail early (at decoration or call time) and name what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import ErrorHandler, Pipeline, PipelineContext, batch_task, single_task


async def _identity(x: Any) -> Any:
    return x


async def _total(batch: list[int]) -> int:
    return sum(batch)


class _Handler(ErrorHandler):
    async def handle_error(
        self, error: Exception, item: Any, task_name: str, attempt: int
    ) -> tuple[bool, Any]:
        return True, None


# -- batch sizes --------------------------------------------------------------------------


def test_max_size_below_min_size() -> None:
    with pytest.raises(ValueError, match="max_size"):
        batch_task(min_size=5, max_size=2)


@pytest.mark.parametrize("min_size", [0, -1])
def test_min_size_below_one(min_size: int) -> None:
    with pytest.raises(ValueError, match="min_size"):
        batch_task(min_size=min_size, max_size=3)


def test_max_size_zero() -> None:
    with pytest.raises(ValueError, match="max_size"):
        batch_task(max_size=0)


def test_negative_max_wait() -> None:
    with pytest.raises(ValueError, match="max_wait"):
        batch_task(max_size=2, max_wait=-1)


# -- common options -----------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1])
def test_concurrency_limit_below_one(limit: int) -> None:
    with pytest.raises(ValueError, match="concurrency_limit"):
        single_task(concurrency_limit=limit)
    with pytest.raises(ValueError, match="concurrency_limit"):
        batch_task(max_size=2, concurrency_limit=limit)


def test_concurrency_limit_not_an_int() -> None:
    with pytest.raises(TypeError, match="concurrency_limit"):
        single_task(concurrency_limit=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="concurrency_limit"):
        batch_task(max_size=2, concurrency_limit=1.5)  # type: ignore[arg-type]


def test_negative_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        single_task(timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        batch_task(max_size=2, timeout=-0.5)


def test_zero_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        single_task(timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        batch_task(max_size=2, timeout=0)


def test_negative_retry_delay() -> None:
    with pytest.raises(ValueError, match="retry_delay"):
        single_task(retry_delay=-1)


def test_negative_retry_max_delay() -> None:
    with pytest.raises(ValueError, match="retry_max_delay"):
        single_task(retry_max_delay=-1)


def test_zero_retry_attempts() -> None:
    with pytest.raises(ValueError, match="retry_attempts"):
        single_task(retry_attempts=0)
    with pytest.raises(ValueError, match="retry_attempts"):
        batch_task(max_size=2, retry_attempts=0)


def test_unknown_on_error() -> None:
    with pytest.raises(ValueError, match="on_error"):
        single_task(on_error="ignore")
    with pytest.raises(ValueError, match="on_error"):
        batch_task(max_size=2, on_error="ignore")


def test_skip_batch_on_single_task() -> None:
    with pytest.raises(ValueError, match="skip_batch"):
        single_task(on_error="skip_batch")


def test_skip_batch_on_batch_task_is_fine() -> None:
    task = batch_task(max_size=2, on_error="skip_batch")(_total)
    assert task.on_error == "skip_batch"


def test_non_callable_to_single_task() -> None:
    with pytest.raises(TypeError, match="single_task"):
        single_task(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="single_task"):
        single_task(on_error="fail")("not a function")  # type: ignore[arg-type]


def test_non_callable_to_batch_task() -> None:
    decorate = batch_task(max_size=2)
    with pytest.raises(TypeError, match="batch_task"):
        decorate(42)  # type: ignore[arg-type]


class _SyncHandler:
    def handle_error(self, error: Exception, item: Any, task_name: str, attempt: int) -> Any:
        return True, None


@pytest.mark.parametrize(
    "handler",
    [
        object(),
        "handler",
        _Handler,  # the class, not an instance
        _SyncHandler(),  # handle_error is not async
    ],
    ids=["object", "str", "class", "sync-method"],
)
def test_bad_error_handler(handler: Any) -> None:
    with pytest.raises(TypeError, match="error_handler"):
        single_task(error_handler=handler)
    with pytest.raises(TypeError, match="error_handler"):
        batch_task(max_size=2, error_handler=handler)


def test_good_error_handler_is_accepted() -> None:
    handler = _Handler()
    task = single_task(error_handler=handler)(_identity)
    assert task.error_handler is handler


@pytest.mark.parametrize(
    "retry_on",
    [ValueError(), "ValueError", (ValueError, "KeyError"), int, ()],
    ids=["instance", "str", "mixed-tuple", "non-exception-type", "empty"],
)
def test_bad_retry_on(retry_on: Any) -> None:
    with pytest.raises(TypeError, match="retry_on"):
        single_task(retry_on=retry_on)


def test_retry_on_single_type_is_accepted() -> None:
    task = single_task(retry_on=KeyError)(_identity)
    assert task.retry_config.retry_on == (KeyError,)


def test_empty_task_name() -> None:
    with pytest.raises(TypeError, match="task_name"):
        single_task(task_name="")
    with pytest.raises(TypeError, match="task_name"):
        batch_task(max_size=2, task_name="")


# -- calling pipelines ----------------------------------------------------------------------


@pytest.mark.parametrize("items", ["abc", b"abc"], ids=["str", "bytes"])
async def test_text_input_is_one_item(items: Any) -> None:
    # As in conveyor-streaming, whose example splits text in the first task: never split
    # into characters.
    task = single_task(_identity)
    assert await task(items).collect() == [items]
    assert await Pipeline([task]).as_completed(items).collect() == [items]


def test_calling_with_int_raises_with_hint() -> None:
    task = single_task(_identity)
    with pytest.raises(TypeError, match=r"pipeline\(\[item\]\)"):
        task(5)
    with pytest.raises(TypeError, match="iterable"):
        Pipeline([task])(5)


@pytest.mark.parametrize("value", [0, -1])
def test_max_in_flight_below_one(value: int) -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        PipelineContext(max_in_flight=value)
    with pytest.raises(ValueError, match="max_in_flight"):
        Pipeline([single_task(_identity)]).with_context(max_in_flight=value)


def test_bogus_execution_mode() -> None:
    pipeline = Pipeline([single_task(_identity)])
    with pytest.raises(ValueError, match="execution_mode"):
        pipeline.with_execution_mode("bogus")
    with pytest.raises(ValueError, match="execution_mode"):
        PipelineContext(execution_mode="bogus")


def test_pipeline_or_non_task() -> None:
    task = single_task(_identity)
    pipeline = Pipeline([task])
    with pytest.raises(TypeError):
        pipeline | 42  # type: ignore[operator]
    with pytest.raises(TypeError):
        pipeline | _identity  # type: ignore[operator]
    with pytest.raises(TypeError):
        task | _identity  # type: ignore[operator]


def test_pipeline_add_non_task() -> None:
    with pytest.raises(TypeError, match="stage"):
        Pipeline().add(_identity)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stage"):
        Pipeline([_identity])  # type: ignore[list-item]

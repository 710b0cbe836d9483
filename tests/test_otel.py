"""OpenTelemetry traces (``conveyor/_engine/_trace.py``, docs/tracing.md): the span tree,
the calls' attributes and outcomes under each error policy, sampling, exceptions, and
nothing imported or paid without OpenTelemetry.

Each test passes its own tracer provider (``PipelineContext(tracing=provider)``), with the
SDK's in-memory exporter: the global provider is set only in subprocesses, so no other
test of the session is traced.
"""

from __future__ import annotations

import asyncio
import gc
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_model import check_ordered, input_kinds, inputs, run_virtual, with_window

from conveyor import ErrorHandler, PipelineContext, batch_task, single_task
from tests import workers

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode


class Traces:
    """A tracer provider of its own, its finished spans read back."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    @property
    def spans(self) -> Sequence[ReadableSpan]:
        return self.exporter.get_finished_spans()

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span

    def parent_of(self, span: ReadableSpan) -> ReadableSpan | None:
        if span.parent is None:
            return None
        (parent,) = [s for s in self.spans if s.context.span_id == span.parent.span_id]
        return parent

    def outcomes(self, name: str) -> list[tuple[str, int, str]]:
        """(item, attempt, outcome) of each call of task ``name``, sorted."""
        return sorted(
            (
                str(span.attributes["conveyor.item"]),
                int(span.attributes["conveyor.attempt"]),  # type: ignore[arg-type]
                str(span.attributes["conveyor.outcome"]),
            )
            for span in self.named(name)
        )


@pytest.fixture
def traces() -> Traces:
    return Traces()


async def test_span_tree_run_calls_and_the_users_spans(traces: Traces) -> None:
    tracer = traces.tracer
    threads: set[str] = set()

    @single_task
    async def fetch(x: int) -> int:
        with tracer.start_as_current_span("user-async"):
            await asyncio.sleep(0)
        return x

    @single_task(executor="thread")
    def on_thread(x: int) -> int:
        threads.add(threading.current_thread().name)
        with tracer.start_as_current_span("user-thread"):
            return x

    @single_task
    def plain(x: int) -> int:
        with tracer.start_as_current_span("user-plain"):
            return x + 1

    pipeline = (fetch | on_thread | plain).with_context(tracing=traces.provider)
    with tracer.start_as_current_span("caller"):
        assert await pipeline(range(4)).collect() == [1, 2, 3, 4]

    assert threading.current_thread().name not in threads  # (really on threads)
    run = traces.one("conveyor.run")
    assert traces.parent_of(run) == traces.one("caller")
    assert run.attributes["conveyor.tasks"] == ("fetch", "on_thread", "plain")
    assert run.status.status_code is StatusCode.UNSET
    users = {"fetch": "user-async", "on_thread": "user-thread", "plain": "user-plain"}
    for task, user in users.items():
        calls = traces.named(task)
        assert len(calls) == 4
        assert all(traces.parent_of(call).name == "conveyor.run" for call in calls)  # type: ignore[union-attr]
        assert all(call.context.trace_id == run.context.trace_id for call in calls)
        inner = traces.named(user)
        assert len(inner) == 4
        # Each user's span is inside one call of its task: the call's span was current.
        assert {traces.parent_of(span).name for span in inner} == {task}  # type: ignore[union-attr]
        assert len({span.parent.span_id for span in inner}) == 4  # type: ignore[union-attr]


async def test_call_attributes(traces: Traces) -> None:
    @single_task
    def double(x: int) -> int:
        return 2 * x

    @batch_task(max_size=3)
    def total(xs: list[int]) -> int:
        return sum(xs)

    pipeline = (double | total).with_context(tracing=traces.provider)
    assert await pipeline(range(6)).collect() == [6, 24]
    first = min(traces.named("double"), key=lambda s: str(s.attributes["conveyor.item"]))
    assert dict(first.attributes) == {  # type: ignore[arg-type]
        "conveyor.task": "double",
        "conveyor.executor": "inline",
        "conveyor.item": "0",
        "conveyor.attempt": 1,
        "conveyor.outcome": "ok",
    }
    batches = traces.named("total")
    assert [b.attributes["conveyor.batch.size"] for b in batches] == [3, 3]
    assert [b.attributes["conveyor.item"] for b in batches] == ["[0, 2, 4]", "[6, 8, 10]"]
    assert {b.attributes["conveyor.outcome"] for b in batches} == {"ok"}


async def test_plain_stages_are_each_traced_though_fused(traces: Traces) -> None:
    """A traced run of plain functions on the loop runs as the tight loop (``_fused``),
    composed of the stages' traced calls: every call still has its span."""

    @single_task
    def a(x: int) -> int:
        return x + 1

    @single_task
    def b(x: int) -> int:
        return x * 2

    @single_task
    def c(x: int) -> int:
        return x - 1

    pipeline = (a | b | c).with_context(tracing=traces.provider)
    assert await pipeline(range(100)).collect() == [2 * (x + 1) - 1 for x in range(100)]
    assert [len(traces.named(name)) for name in "abc"] == [100, 100, 100]


def _failing(**options: Any) -> Any:
    @single_task(retry_delay=0, retry_jitter=0, **options)
    def check(x: int) -> int:
        if x == 2:
            raise ValueError(f"bad {x}")
        return x

    return check


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"on_error": "skip_item"}, "skipped"),
        ({"on_error": "emit"}, "emitted"),
        ({"on_error": "fail"}, "failed"),
    ],
)
async def test_outcome_under_each_policy(
    traces: Traces, options: dict[str, Any], expected: str
) -> None:
    pipeline = _failing(**options).with_context(tracing=traces.provider)
    if expected == "failed":
        with pytest.raises(ValueError, match="bad 2"):
            await pipeline(range(4)).collect()
    else:
        await pipeline(range(4)).collect()
    calls = {str(s.attributes["conveyor.item"]): s for s in traces.named("check")}
    bad = calls["2"]
    assert bad.attributes["conveyor.outcome"] == expected
    assert bad.status.status_code is StatusCode.ERROR
    assert bad.status.description == "ValueError: bad 2"
    (event,) = bad.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"  # type: ignore[index]
    assert event.attributes["exception.message"] == "bad 2"  # type: ignore[index]
    assert calls["0"].attributes["conveyor.outcome"] == "ok"
    assert calls["0"].status.status_code is StatusCode.UNSET
    run = traces.one("conveyor.run")
    if expected == "failed":  # the run failed with it: its span says so
        assert run.status.status_code is StatusCode.ERROR
        assert [e.attributes["exception.type"] for e in run.events] == ["ValueError"]  # type: ignore[index]
    else:
        assert run.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("suspend", [False, True])
async def test_retries_are_spans_of_their_own(traces: Traces, suspend: bool) -> None:
    """Each attempt is a span: the failed ones ``retried``, then the last one's outcome."""
    tries: dict[int, int] = {}

    async def flaky_async(x: int) -> int:
        await asyncio.sleep(0)
        return flaky_sync(x)

    def flaky_sync(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        if x == 1 and tries[x] < 3:  # succeeds at the third attempt
            raise ConnectionError("flaky")
        if x == 2:  # never succeeds
            raise ConnectionError("down")
        return x

    task = single_task(
        flaky_async if suspend else flaky_sync,
        retry_attempts=3,
        retry_delay=0,
        retry_jitter=0,
        on_error="skip_item",
        task_name="flaky",
    )
    pipeline = task.with_context(tracing=traces.provider)
    assert await pipeline(range(3)).collect() == [0, 1]
    assert traces.outcomes("flaky") == [
        ("0", 1, "ok"),
        ("1", 1, "retried"),
        ("1", 2, "retried"),
        ("1", 3, "ok"),
        ("2", 1, "retried"),
        ("2", 2, "retried"),
        ("2", 3, "skipped"),
    ]


async def test_outcome_handled_and_split(traces: Traces) -> None:
    class Replace(ErrorHandler):
        async def handle_error(self, exc: Exception, item: Any, task: str, attempt: int) -> Any:
            return True, -1

    @single_task(error_handler=Replace())
    def handled(x: int) -> int:
        if x == 1:
            raise KeyError(x)
        return x

    @batch_task(max_size=4, on_error="skip_item")
    def batched(xs: list[int]) -> list[int]:
        if 2 in xs:
            raise ValueError("has 2")
        return xs

    pipeline = (handled | batched).with_context(tracing=traces.provider)
    assert await pipeline(range(4)).collect() == [0, -1, 3]
    assert traces.outcomes("handled") == [
        ("0", 1, "ok"),
        ("1", 1, "handled"),
        ("2", 1, "ok"),
        ("3", 1, "ok"),
    ]
    # The batch split in halves, then the failing half in items: one left out.
    assert traces.outcomes("batched") == [
        ("[0, -1, 2, 3]", 1, "split"),
        ("[0, -1]", 1, "ok"),
        ("[2, 3]", 1, "split"),
        ("[2]", 1, "skipped"),
        ("[3]", 1, "ok"),
    ]
    assert [s.attributes["conveyor.batch.size"] for s in traces.named("batched")] == [
        4,
        2,
        2,
        1,
        1,
    ]


async def test_timeout_cancelled(traces: Traces) -> None:
    @single_task(timeout=0.01, on_error="skip_item")
    async def slow(x: int) -> int:
        await asyncio.sleep(10 if x == 1 else 0)
        return x

    pipeline = slow.with_context(tracing=traces.provider)
    assert await pipeline(range(3)).collect() == [0, 2]
    assert traces.outcomes("slow") == [("0", 1, "ok"), ("1", 1, "cancelled"), ("2", 1, "ok")]


@pytest.mark.parametrize(("rate", "low", "high"), [(0.0, 0, 0), (0.1, 70, 130), (1.0, 1000, 1000)])
async def test_sampling(traces: Traces, rate: float, low: int, high: int) -> None:
    """A share of the calls is traced; the user's spans in the calls left out are not
    recorded (their parent is unsampled); the run always has its span."""
    tracer = traces.tracer

    @single_task
    async def call(x: int) -> int:
        with tracer.start_as_current_span("user"):
            await asyncio.sleep(0)
        return x

    random.seed(19)
    context = {"tracing": traces.provider, "trace_sampling": rate}
    assert len(await call.with_context(**context)(range(1000)).collect()) == 1000
    traced = traces.named("call")
    assert low <= len(traced) <= high
    users = traces.named("user")
    assert len(users) == len(traced)
    assert {u.parent.span_id for u in users} == {c.context.span_id for c in traced}  # type: ignore[union-attr]
    assert len(traces.named("conveyor.run")) == 1


async def test_the_providers_sampler_applies(traces: Traces) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(traces.exporter))

    @single_task
    def call(x: int) -> int:
        with traces.tracer.start_as_current_span("user"):
            return x

    assert await call.with_context(tracing=provider)(range(10)).collect() == list(range(10))
    # Nothing recorded: not the run, nor its calls, nor the user's spans (made by another
    # provider, which samples as its parent did: the run's span, current in the calls).
    assert traces.spans == ()


async def test_a_process_stage_has_a_span_per_call(traces: Traces) -> None:
    task = single_task(workers.square, executor="process")
    pipeline = task.with_context(tracing=traces.provider)
    assert await pipeline(range(5)).collect() == [0, 1, 4, 9, 16]
    calls = traces.named("square")
    assert len(calls) == 5
    assert {c.attributes["conveyor.executor"] for c in calls} == {"process"}
    assert {c.attributes["conveyor.outcome"] for c in calls} == {"ok"}


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match=r"trace_sampling must be a number from 0\.0 to 1\.0"):
        PipelineContext(trace_sampling=1.5)
    with pytest.raises(ValueError, match="trace_sampling"):
        PipelineContext(trace_sampling=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"tracing must be None .* TracerProvider, got 'yes'"):
        PipelineContext(tracing="yes")
    PipelineContext(trace_sampling=0, tracing=False)


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_without_opentelemetry_nothing_is_imported() -> None:
    """Without opentelemetry-api (its import blocked), a run works and imports nothing;
    ``tracing=True`` says what to install."""
    out = _python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if not installed: importing it fails
        import asyncio
        from conveyor import PipelineContext, single_task

        @single_task
        def inc(x):
            return x + 1

        print(asyncio.run(inc(range(3)).collect()))
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry.")))
        try:
            PipelineContext(tracing=True)
        except ImportError as exc:
            print(exc)
        """
    )
    assert out.splitlines() == [
        "[1, 2, 3]",
        "[]",
        "tracing=True needs the OpenTelemetry API, which is not installed: "
        "pip install 'conveyor[otel]' (or opentelemetry-api)",
    ]


def test_by_default_traced_only_with_a_global_provider() -> None:
    """``tracing=None``: installed but unused, OpenTelemetry is not even imported; with
    a global tracer provider set, runs are traced; ``tracing=False`` turns it off."""
    out = _python(
        """
        import asyncio, sys
        from conveyor import single_task

        @single_task
        def inc(x):
            return x + 1

        asyncio.run(inc(range(3)).collect())
        print("opentelemetry" in sys.modules)

        from opentelemetry import trace
        asyncio.run(inc(range(3)).collect())  # (no provider set: the API's placeholder)

        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        asyncio.run(inc(range(3)).collect())
        print(sorted(span.name for span in exporter.get_finished_spans()))
        exporter.clear()
        asyncio.run(inc.with_context(tracing=False)(range(3)).collect())
        print(len(exporter.get_finished_spans()))
        """
    )
    assert out.splitlines() == ["False", "['conveyor.run', 'inc', 'inc', 'inc']", "0"]


def test_tracing_is_not_in_a_global_provider_here() -> None:
    """(This module never sets the global provider: no other test is traced.)"""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


async def test_a_run_closed_early_ends_every_span(traces: Traces) -> None:
    """Calls cut short by the run's end (``aclose``) end their spans as ``cancelled``,
    and their coroutines are closed (no "never awaited" warning: an error here)."""
    started: list[int] = []

    @single_task
    async def slow(x: int) -> int:
        started.append(x)
        await asyncio.sleep(0 if x == 0 else 3600)
        return x

    stream = slow.with_context(tracing=traces.provider, max_in_flight=20)(range(100))
    async with stream:
        async for first in stream:
            assert first == 0
            break
    gc.collect()  # (a call's wrapper that never started is let go of)
    outcomes = [s.attributes["conveyor.outcome"] for s in traces.named("slow")]
    assert len(outcomes) == 20  # every call made, whether it started or not
    assert outcomes.count("ok") == 1
    assert outcomes.count("cancelled") == 19
    assert len(traces.named("conveyor.run")) == 1


# -- the model (tests/test_model.py), traced ---------------------------------------------

_MODEL_TRACES = Traces()
_OUTCOMES = {"ok", "retried", "failed", "emitted", "skipped", "handled", "split", "cancelled"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipeline=with_window(), items=inputs, kind=input_kinds, sampling=st.sampled_from([1.0, 0.5]))
def test_traced_runs_match_the_reference(
    pipeline: tuple[list[Any], int], items: list[int], kind: str, sampling: float
) -> None:
    """Tracing changes nothing a run does: random pipelines, traced, give exactly the
    model's results and counts; the run has one span, every call span is its child and
    says how the call ended."""
    specs, window = pipeline
    exporter = _MODEL_TRACES.exporter
    exporter.clear()
    outcome = run_virtual(
        specs,
        items,
        mode="ordered",
        kind=kind,
        window=window,
        tracing=_MODEL_TRACES.provider,
        trace_sampling=sampling,
    )
    check_ordered(specs, items, outcome, window)
    gc.collect()  # (the spans of calls that never started end when they are let go of)
    spans = exporter.get_finished_spans()
    (run,) = [span for span in spans if span.name == "conveyor.run"]
    calls = [span for span in spans if span is not run]
    assert all(call.parent.span_id == run.context.span_id for call in calls)  # type: ignore[union-attr]
    assert {call.attributes["conveyor.outcome"] for call in calls} <= _OUTCOMES
    if sampling == 1.0 and outcome.error is None and not specs[0].batch:
        # Every item was called on by the first stage, at least once (retries: more).
        first = [call for call in calls if call.name == "s0"]
        assert len(first) >= len(items)
        assert len({call.attributes["conveyor.item"] for call in first}) == len(set(items))

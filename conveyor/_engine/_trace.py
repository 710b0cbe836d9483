"""OpenTelemetry traces: a run is a span, each call a child span, composed when the run is
built.

**When.** ``PipelineContext.tracing`` decides, once per run (:func:`traced_run`):
``False``, never; a tracer provider, that one; ``True``, the global one
(``opentelemetry.trace.get_tracer_provider()``); ``None`` (the default), the global one
if the program has configured one (``opentelemetry.trace`` imported and its provider not
the API's placeholder). Nothing here imports OpenTelemetry before that decision: a
program that never imports ``opentelemetry`` pays nothing for tracing, and a run that is
not traced costs nothing either (no stage's call is wrapped).

**The run's span** (``conveyor.run``) is a child of the span current where the run is
built (the stream's first iteration). It is current in the run's context, so everything
that runs in a copy of it (the supervisor, resources, the input, every call) sees it; it
ends when the run is over (``Run.on_over``), with the run's error recorded, if any.

**A call's span** is named after its task and is a child of the run's span. Each attempt
is a call: a retry is a span of its own. :meth:`RunTracing.stage` gives a stage the
function that wraps its bound call (``Stage.bind``: composed once, nothing is checked
per call when tracing is off; the tight loop of plain functions, ``_fused``, is composed
of the wrapped calls too). The span is current while the call runs: around a plain
call, inside the awaited coroutine of an ``async def``, and in a thread (conveyor's
thread pools run each call in a copy of the context it was submitted from). A call on
processes or Dask gets a span from its submission to its answer; the context does not go
with it. The span ends when the call's result is out (a generator's span ends when it
is returned, not when it has been read), with these attributes:

* ``conveyor.task``: the task's name (the span's name too);
* ``conveyor.item``: the item's short repr (a batch's, for a batch stage);
* ``conveyor.attempt``: 1 for the first call of an item, 2 for its first retry, ...
  (``_policy.ATTEMPT``);
* ``conveyor.executor``: the executor's short name (``inline`` on the loop);
* ``conveyor.batch.size``: the batch's size (batch stages);
* ``conveyor.outcome``: ``ok``; for a call that raised, what the error policy makes of
  it (``_policy.Policy.outcome``): ``retried``, ``failed``, ``emitted``, ``skipped``,
  ``handled`` (given to the task's error handler), ``split`` (a batch under
  ``skip_item``, called again in halves); ``cancelled`` for a call cut short by its
  timeout or the run's end. The exception is recorded on the span, whose status is then
  ``ERROR``.

**Sampling.** ``PipelineContext.trace_sampling`` is the share of calls traced, each
chosen at random (``random.random()``). Below 1, the run's context carries an unsampled
copy of the run's span: calls not chosen, and code of the run outside any call, make no
recorded span (a user's spans there have an unsampled parent); a chosen call's span is
made as a child of the run's span. The tracer provider's sampler applies on top: if it
drops the run's span, no call is traced.
"""

from __future__ import annotations

import random
import sys
import weakref
from collections.abc import Callable
from inspect import CORO_CREATED, getcoroutinestate
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from ..errors import short_repr
from ._calls import AWAIT, KINDS_GET, as_awaitable, kind_of
from ._policy import ATTEMPT
from ._registry import display_name

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from .._spec import StageSpec
    from ..context import PipelineContext
    from ._stage import Stage

__all__ = ["RunTracing", "traced_run"]

_version = "0.1.0"  # (conveyor's: the instrumentation scope's version)


def traced_run(context: PipelineContext, specs: Sequence[StageSpec]) -> RunTracing | None:
    """The tracing of a run of ``specs`` in ``context`` (``None``: not traced), called
    where the run is built: the span current there is the run's parent."""
    setting = context.tracing
    if setting is False:
        return None
    if setting is None:
        if "opentelemetry.trace" not in sys.modules:  # not in use: import nothing
            return None
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):  # none configured
            return None
    else:
        from opentelemetry import trace

        provider = trace.get_tracer_provider() if setting is True else setting
    return RunTracing(provider.get_tracer("conveyor", _version), context, specs)


class RunTracing:
    """The tracing of one run: its span, and what each stage wraps its calls in."""

    __slots__ = ("base", "calls", "parent", "rate", "span", "tracer")

    def __init__(
        self,
        tracer: Tracer,
        context: PipelineContext,
        specs: Sequence[StageSpec],
    ) -> None:
        from opentelemetry import context as otel
        from opentelemetry import trace

        self.tracer = tracer
        self.rate = context.trace_sampling
        attributes: dict[str, Any] = {"conveyor.tasks": [spec.name for spec in specs]}
        if context.pipeline_id is not None:
            attributes["conveyor.pipeline_id"] = context.pipeline_id
        self.span: Span = tracer.start_span(
            "conveyor.run", context=otel.get_current(), attributes=attributes
        )
        # Where calls' spans are made: under the run's span.
        self.parent: Context = trace.set_span_in_context(self.span)
        # Whether calls get spans: the provider's sampler kept the run, and some share of
        # calls is asked for (else no call is wrapped: see ``Stage.bind``).
        self.calls = self.span.is_recording() and self.rate > 0.0
        if self.rate < 1.0 and self.span.is_recording():
            # What the run's code sees outside a chosen call: an unsampled copy of the
            # run's span, so that spans made there are not recorded (see the module doc).
            own = self.span.get_span_context()
            unsampled = trace.NonRecordingSpan(
                trace.SpanContext(
                    own.trace_id, own.span_id, False, trace.TraceFlags(0), own.trace_state
                )
            )
            self.base = trace.set_span_in_context(unsampled)
        else:
            self.base = self.parent

    def enter(self) -> None:
        """(Called in the run's own context, which nothing else uses.) Make the run's
        span current there, for everything the run runs in copies of it."""
        from opentelemetry import context as otel

        otel.attach(self.base)  # (never detached: the context ends with the run)

    def over(self, run: Any) -> None:
        """(``Run.on_over``.) The run is over: its span ends, with its error if any."""
        error = run.error
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self.span.end()

    def stage(self, stage: Stage) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]] | None:
        """What ``stage`` wraps its bound call in (``None``: its calls are not traced)."""
        if not self.calls:
            return None
        return StageTracing(self, stage).wrap


class StageTracing:
    """The spans of one stage's calls (see the module's docstring)."""

    __slots__ = ("attributes", "batch", "name", "policy", "run")

    def __init__(self, run: RunTracing, stage: Stage) -> None:
        self.run = run
        self.name = stage.name
        self.policy = stage.policy
        self.batch = stage.spec.batch
        self.attributes: dict[str, Any] = {
            "conveyor.task": stage.name,
            "conveyor.executor": display_name(stage.spec.options.executor) or "inline",
        }

    def wrap(self, call: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``call`` (a stage's bound call), each call of it in a span when chosen."""
        from opentelemetry import context as otel
        from opentelemetry import trace

        start_span = self.run.tracer.start_span
        in_context = trace.set_span_in_context
        attach, detach = otel.attach, otel.detach
        parent, rate, chosen = self.run.parent, self.run.rate, random.random
        name, fixed, batch = self.name, self.attributes, self.batch
        ended, finish = self.ended, self.finish

        def traced(item: Any) -> Any:
            if rate < 1.0 and chosen() >= rate:
                return call(item)
            attributes = dict(fixed)
            attributes["conveyor.item"] = short_repr(item)
            attempt = ATTEMPT.get()
            attributes["conveyor.attempt"] = attempt or 1
            if batch:
                attributes["conveyor.batch.size"] = len(item)
            span = start_span(name, context=parent, attributes=attributes)
            token = attach(in_context(span))
            try:
                result = call(item)
            except BaseException as exc:
                ended(span, exc, item, attempt)
                raise
            finally:
                detach(token)
            kind = KINDS_GET(type(result))
            if kind is None:
                kind = kind_of(type(result))
            if kind == AWAIT:
                wrapper = finish(result, span, item, attempt)
                # A wrapper closed before it starts (the run ended) never awaits the
                # call's coroutine: close that too, or it warns "never awaited"; and end
                # the span.
                weakref.finalize(wrapper, _abandoned, result, span)
                return wrapper
            span.set_attribute("conveyor.outcome", "ok")
            span.end()
            return result

        return traced

    async def finish(self, awaitable: Any, span: Span, item: Any, attempt: int) -> Any:
        """Await a call's awaitable with its span current; end the span."""
        from opentelemetry import context as otel
        from opentelemetry import trace

        token = otel.attach(trace.set_span_in_context(span))
        try:
            result = await as_awaitable(awaitable)
        except BaseException as exc:
            self.ended(span, exc, item, attempt)
            raise
        finally:
            otel.detach(token)
        span.set_attribute("conveyor.outcome", "ok")
        span.end()
        return result

    def ended(self, span: Span, exc: BaseException, item: Any, attempt: int) -> None:
        """A call raised ``exc``: what the policy makes of it, the exception recorded."""
        from opentelemetry.trace import Status, StatusCode

        if isinstance(exc, Exception):
            outcome = self.policy.outcome(exc, item, attempt)
        else:  # (a CancelledError: the call's timeout, or the run's end)
            outcome = "cancelled"
        span.set_attribute("conveyor.outcome", outcome)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()


def _abandoned(awaitable: Any, span: Span) -> None:
    """(A traced call's wrapper is gone.) If it never ran: close the call's coroutine,
    end its span (as cancelled)."""
    if type(awaitable) is CoroutineType and getcoroutinestate(awaitable) == CORO_CREATED:
        awaitable.close()
    if span.is_recording():
        span.set_attribute("conveyor.outcome", "cancelled")
        span.end()

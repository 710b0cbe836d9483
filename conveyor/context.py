"""Per-run pipeline context, visible to tasks through :func:`get_current_context`.

Every run of a pipeline gets its own copy of the pipeline's :class:`PipelineContext`
(with a fresh ``pipeline_id`` and a shallow copy of ``data``), installed in a
:mod:`contextvars` variable for the duration of the run.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import enum
import importlib.util
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, TypeVar, get_args

__all__ = [
    "ContextManager",
    "ExecutionMode",
    "PipelineContext",
    "get_current_context",
    "set_current_context",
    "with_context",
]

T = TypeVar("T")

DEFAULT_MAX_IN_FLIGHT = 1000
DEFAULT_MAX_IN_FLIGHT_BYTES = 64 << 20  # 64 MiB: a few large chunks (see _engine/_weight)
RetryLog = Literal["each", "summary"]  # PipelineContext.retry_log (its docstring says what)


class ExecutionMode(enum.StrEnum):
    """How a run delivers results. Plain strings (``"ordered"``) are accepted too."""

    ORDERED = "ordered"
    """Results in input order, each yielded as soon as everything before it has been."""
    AS_COMPLETED = "as_completed"
    """Results in completion order: every stage emits as soon as a result is ready."""


def parse_execution_mode(value: Any) -> ExecutionMode:
    try:
        return ExecutionMode(value)
    except ValueError:
        raise ValueError(
            f"execution_mode must be 'ordered' or 'as_completed', got {value!r}"
        ) from None


@dataclasses.dataclass
class PipelineContext:
    """Settings and shared state of one pipeline run.

    ``max_in_flight`` bounds how many items are admitted and not yet delivered (the
    window); in ordered mode it also bounds the reorder buffer. ``max_parallelism``,
    when set, caps the concurrent calls of every single task that sets no
    ``concurrency_limit`` of its own. ``data`` is copied (shallowly) for every run.
    ``statistics`` collects the run's statistics (``stream.stats``); turning them off
    saves their cost (a few percent of the fastest pipelines' throughput). ``progress``
    shows every run's progress as ``stream.progress()`` does, with its defaults.

    ``max_in_flight_bytes`` bounds the memory the input holds in the run: the input is
    read on only while the window holds fewer than ``max_in_flight_bytes`` divided by the
    items' mean weight (64 MiB by default; ``None``: items are only counted). Bytes,
    buffers, arrays and pandas objects weigh their size; ``item_weight(item)`` weighs
    others (bytes, or ``None`` for no weight).

    ``retry_log`` is how the ``conveyor`` logger tells of retries: ``"each"`` a WARNING
    per retry; ``"summary"`` one WARNING per task that retried, at the end of the run (its
    retries, the items retried, the commonest errors). See docs/logging.md.
    ``tracing`` makes each run an OpenTelemetry span and each call a child span (see
    docs/tracing.md; needs ``opentelemetry-api``: ``pip install 'conveyor[otel]'``):
    ``None`` (the default) traces when the program has configured a global tracer
    provider (and imports nothing otherwise), ``True`` always (with the global provider),
    ``False`` never, and a tracer provider object traces with that provider.
    ``trace_sampling`` is the share of calls traced (0.0 to 1.0), each chosen at random.
    """

    execution_mode: ExecutionMode | str = ExecutionMode.ORDERED
    max_parallelism: int | None = None
    pipeline_id: str | None = None
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    statistics: bool = True
    progress: bool = False
    max_in_flight_bytes: int | None = DEFAULT_MAX_IN_FLIGHT_BYTES
    item_weight: Callable[[Any], int | None] | None = None
    retry_log: RetryLog = "each"
    tracing: Any = None  # None, True, False or an OpenTelemetry TracerProvider
    trace_sampling: float = 1.0

    def __post_init__(self) -> None:
        self.execution_mode = parse_execution_mode(self.execution_mode)
        if not isinstance(self.max_in_flight, int) or self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an int >= 1, got {self.max_in_flight!r}")
        if not isinstance(self.statistics, bool):
            raise ValueError(f"statistics must be True or False, got {self.statistics!r}")
        if self.max_in_flight_bytes is not None and (
            isinstance(self.max_in_flight_bytes, bool)
            or not isinstance(self.max_in_flight_bytes, int)
            or self.max_in_flight_bytes < 1
        ):
            raise ValueError(
                f"max_in_flight_bytes must be an int >= 1 (bytes) or None (no byte "
                f"bound), got {self.max_in_flight_bytes!r}"
            )
        if self.item_weight is not None and not callable(self.item_weight):
            raise TypeError(
                f"item_weight must be a function of an item returning its size in bytes "
                f"(or None), got {self.item_weight!r}"
            )
        if self.retry_log not in get_args(RetryLog):
            raise ValueError(
                f"retry_log must be 'each' (a warning per retry) or 'summary' (one warning "
                f"per task at the end of the run), got {self.retry_log!r}"
            )
        if not isinstance(self.progress, bool):
            raise ValueError(
                f"progress must be True or False, got {self.progress!r}; for options "
                f"(file=, stages=, interval=) call pipeline(items).progress(...)"
            )
        if self.max_parallelism is not None and (
            not isinstance(self.max_parallelism, int) or self.max_parallelism < 1
        ):
            raise ValueError(
                f"max_parallelism must be None or an int >= 1, got {self.max_parallelism!r}"
            )

        if not (
            self.tracing is None
            or isinstance(self.tracing, bool)
            or callable(getattr(self.tracing, "get_tracer", None))
        ):
            raise TypeError(
                f"tracing must be None (trace when a global tracer provider is set), True, "
                f"False or an OpenTelemetry TracerProvider, got {self.tracing!r}"
            )
        if self.tracing is True and importlib.util.find_spec("opentelemetry") is None:
            raise ImportError(
                "tracing=True needs the OpenTelemetry API, which is not installed: "
                "pip install 'conveyor[otel]' (or opentelemetry-api)"
            )
        if (
            isinstance(self.trace_sampling, bool)
            or not isinstance(self.trace_sampling, (int, float))
            or not 0.0 <= self.trace_sampling <= 1.0
        ):
            raise ValueError(
                f"trace_sampling must be a number from 0.0 to 1.0 (the share of calls "
                f"traced: 0.1 traces one call in ten), got {self.trace_sampling!r}"
            )

    def copy(self) -> PipelineContext:
        """A copy whose ``data`` dict is a new (shallow) copy."""
        return dataclasses.replace(self, data=dict(self.data))


_SETTABLE = tuple(f.name for f in dataclasses.fields(PipelineContext) if f.name != "data")

_current: contextvars.ContextVar[PipelineContext | None] = contextvars.ContextVar(
    "conveyor_pipeline_context", default=None
)


def context_with(base: PipelineContext, **updates: Any) -> PipelineContext:
    """A copy of ``base`` with ``updates``: context fields are set; ``data=`` adds its keys
    to the context's ``data``. Any other key is refused (a typo such as
    ``max_inflight`` would otherwise be silently ignored)."""
    ctx = base.copy()
    for key, value in updates.items():
        if key == "data":
            if not isinstance(value, dict):
                raise TypeError(f"data must be a dict, got {type(value).__name__}")
            ctx.data.update(value)
        elif key in _SETTABLE:
            setattr(ctx, key, value)
        else:
            close = difflib.get_close_matches(key, _SETTABLE, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TypeError(
                f"with_context() got an unknown key {key!r}: {hint}the context's settings "
                f"are {', '.join(_SETTABLE)}; put your own values under data=, e.g. "
                f"with_context(data={{{key!r}: ...}})"
            )
    ctx.__post_init__()
    return ctx


def get_current_context() -> PipelineContext | None:
    """The context of the pipeline run the caller is part of, or ``None`` outside one."""
    return _current.get()


def set_current_context(context: PipelineContext | None) -> None:
    """Install ``context`` as the current one (in the current :mod:`contextvars` context)."""
    _current.set(context)


class ContextManager:
    """``with ContextManager(ctx):`` installs ``ctx`` and restores the previous one on exit."""

    def __init__(self, context: PipelineContext | None) -> None:
        self.context = context
        self._token: contextvars.Token[PipelineContext | None] | None = None

    def __enter__(self) -> PipelineContext | None:
        self._token = _current.set(self.context)
        return self.context

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None


async def with_context(context: PipelineContext | None, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` with ``context`` installed as the current pipeline context."""
    with ContextManager(context):
        return await awaitable

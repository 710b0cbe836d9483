"""Pipelines: tasks composed with ``|``."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, overload

from . import _mermaid, _sync
from ._engine._input import NO_INPUT
from ._engine._origin import items_of
from ._spec import StageSpec
from .checkpoint import Checkpoint, Resumed
from .context import ExecutionMode, PipelineContext, context_with
from .errors import Failure
from .feedback import Feedback
from .stream import AsyncStream, check_input

if TYPE_CHECKING:
    from .tasks import BaseTask  # (types only: tasks build on pipelines, not the reverse)

__all__ = ["Pipeline"]

In = TypeVar("In")
Out = TypeVar("Out")
R = TypeVar("R")
X = TypeVar("X")


class Pipeline(Generic[In, Out]):
    """A sequence of tasks; calling it runs them over an input as one stream.

    Every stage runs concurrently with every other: an item moves to the next stage as
    soon as it leaves the previous one. ``|`` returns a new pipeline and never changes its
    operands; ``add`` extends this pipeline in place (as in conveyor-streaming).
    """

    def __init__(
        self,
        stages: Iterable[BaseTask[Any, Any]] | PipelineContext | None = None,
        context: PipelineContext | None = None,
    ) -> None:
        if isinstance(stages, PipelineContext):  # conveyor-streaming's Pipeline(context)
            stages, context = None, stages
        self.stages: list[BaseTask[Any, Any]] = []
        self.context = context.copy() if context is not None else PipelineContext()
        # The checkpoint its runs read their input through (``with_checkpoint``).
        self.checkpoint: tuple[Checkpoint, bool] | None = None
        # Whether its runs pair each result with its input item(s) (``with_items``).
        self.paired = False
        for task in stages or ():
            self._append(task)

    def _append(self, task: Any) -> None:
        if isinstance(task, Pipeline):
            self.stages.extend(task.stages)
        elif isinstance(getattr(task, "spec", None), StageSpec):
            self.stages.append(task)
        else:
            raise TypeError(_not_a_stage(task))

    def add(self, *tasks: BaseTask[Any, Any] | Pipeline[Any, Any]) -> Pipeline[Any, Any]:
        """Append ``tasks`` to this pipeline (in place) and return it."""
        for task in tasks:
            self._append(task)
        return self

    # A Failure passes later stages untouched: after a stage that may emit one, the
    # pipeline's results are the later stages' results or Failures (for type checkers).
    @overload
    def __or__(
        self: Pipeline[In, X | Failure[Any]], other: BaseTask[X, R] | Pipeline[X, R]
    ) -> Pipeline[In, R | Failure[Any]]: ...
    @overload
    def __or__(self, other: BaseTask[Out, R] | Pipeline[Out, R]) -> Pipeline[In, R]: ...

    def __or__(self, other: Any) -> Any:
        if not isinstance(other, Pipeline) and not isinstance(
            getattr(other, "spec", None), StageSpec
        ):
            raise TypeError(_not_a_stage(other))
        result: Pipeline[In, Any] = self._copy(self.context)
        result._append(other)
        return result

    def _copy(self, context: PipelineContext) -> Pipeline[Any, Any]:
        """A copy of this pipeline in ``context``, with its run options."""
        result: Pipeline[Any, Any] = Pipeline(self.stages, context)
        result.checkpoint = self.checkpoint
        result.paired = self.paired
        return result

    def __ror__(self, other: Any) -> Any:
        raise TypeError(_not_a_stage(other))

    def __and__(self, other: Pipeline[Any, Any]) -> NoReturn:
        """``pipeline & pipeline`` is refused, naming the fix (``pipeline & task`` is
        the task's ``__rand__``: ``conveyor.parallel(pipeline, task)``)."""
        if not isinstance(other, Pipeline):
            return NotImplemented
        raise TypeError(
            f"pipeline & pipeline is not an operator (({self!r}) & ({other!r})): write "
            f"conveyor.parallel(first, second) to give each item to both pipelines"
        )

    def __call__(self, items: Iterable[In] | AsyncIterable[In] | Any = ..., /) -> AsyncStream[Out]:
        """Start a run over ``items``; returns the stream of its results.

        ``items`` may be any iterable (pulled lazily) or async iterable, including another
        pipeline's stream. With no argument, the first task is called once with no item:
        a *source* task, typically an async generator, feeding the rest.
        """
        specs = tuple(task.spec for task in self.stages)
        source = check_input(items)
        _check_branches(specs, source)
        if self.checkpoint is not None:
            source = _resumed(source, *self.checkpoint)
        if self.paired and isinstance(source, Feedback):
            raise TypeError(
                "with_items() pairs each result with the input item it comes from: a run "
                "on a Feedback input cannot (its items come back from its own results); "
                "pair them yourself, or give the pipeline an iterable of items"
            )
        return AsyncStream._for_pipeline(
            specs, source, self.context, items_of if self.paired else None
        )

    def run(self, items: Iterable[In] | AsyncIterable[In] | Any = ..., /) -> list[Out]:
        """From plain synchronous code: run over ``items`` and return the results.

        Refused inside a running event loop (there, ``await pipeline(items).collect()``).
        """
        return _sync.run_to_list(lambda: self(items))

    def iter(self, items: Iterable[In] | AsyncIterable[In] | Any = ..., /) -> Iterator[Out]:
        """From plain synchronous code: stream the results of a run over ``items``.

        The run executes on an event loop in a background thread; memory stays bounded
        by the window; leaving the ``for`` loop early closes the run and its input. See
        ``conveyor._sync``. Refused inside a running event loop.
        """
        return _sync.iterate(lambda: self(items))

    def as_completed(
        self, items: Iterable[In] | AsyncIterable[In] | Any = ..., /
    ) -> AsyncStream[Out]:
        """Like calling the pipeline, but results come in completion order."""
        return self(items).as_completed()

    def with_execution_mode(self, mode: ExecutionMode | str) -> Pipeline[In, Out]:
        """A copy that runs in ``mode``: ``"ordered"`` (default) or ``"as_completed"``."""
        return self.with_context(execution_mode=mode)

    def with_context(self, **updates: Any) -> Pipeline[In, Out]:
        """A copy whose context has ``updates``: context fields are set, other keys go in
        ``data``. E.g. ``with_context(max_in_flight=100, user="ann")``."""
        return self._copy(context_with(self.context, **updates))

    def with_checkpoint(
        self, checkpoint: Checkpoint | None, *, retry_failed: bool = False
    ) -> Pipeline[In, Out]:
        """A copy whose runs record, in ``checkpoint``, each input item they are done
        with, and skip (without calling any task) the items it holds as done, or as
        failed unless ``retry_failed``. ``None``: a copy without a checkpoint. See
        docs/checkpoint-design.md."""
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise TypeError(
                f"with_checkpoint(checkpoint=...) must be a conveyor.Checkpoint or None, "
                f"got {checkpoint!r}; e.g. pipeline.with_checkpoint(Checkpoint('run.db'))"
            )
        result: Pipeline[In, Out] = self._copy(self.context)
        result.checkpoint = None if checkpoint is None else (checkpoint, bool(retry_failed))
        return result

    def with_items(self) -> Pipeline[In, tuple[Any, Out]]:
        """A copy whose runs yield ``(item, result)`` pairs: ``item`` is the input item
        the result descends from, whatever the stages made of it (for a batch's result,
        the list of the batch's input items, in its order; for a source task's result,
        ``None``). A :class:`~conveyor.errors.Failure` comes paired too (its ``.item`` is
        the item at the stage that failed; the pair's, the input item). Order, bounds
        and policies are unchanged; a result dropped or filtered out makes no pair. See
        docs/composition.md."""
        result: Pipeline[In, tuple[Any, Out]] = self._copy(self.context)
        result.paired = True
        return result

    def to_mermaid(self) -> str:
        """A Mermaid flowchart (``flowchart LR``) of this pipeline, as text.

        Nodes, in order and joined by edges: ``input``; one per stage, ``s0``, ``s1``, ...
        (batch stages in the subroutine shape ``[[...]]``), labelled with the task name,
        ``single`` or ``batch`` and its sizes (``batch 32``, or ``batch 4–32`` when
        ``min_size`` differs) and ``max_wait``, then only the options not at their
        default: ``concurrency``, ``rate limit``, ``executor`` (and ``chunk_size``),
        ``on_error``, ``retry_attempts``, ``error_handler`` (its class), ``timeout``;
        ``output``,
        labelled with the execution mode (``ordered`` / ``as completed``), the window
        (``max_in_flight``) and ``max_parallelism`` if set. Labels are escaped (see
        ``conveyor._mermaid.escape``). A run's figures: ``stream.stats.to_mermaid()``.
        """  # noqa: RUF002 (the en dash is what the chart shows)
        return _mermaid.pipeline_chart([task.spec for task in self.stages], self.context)

    def __len__(self) -> int:
        return len(self.stages)

    def __repr__(self) -> str:
        return " | ".join(repr(task) for task in self.stages) or "Pipeline()"


def _resumed(source: Any, checkpoint: Checkpoint, retry_failed: bool) -> Resumed:
    if source is NO_INPUT or isinstance(source, Feedback):
        what = "no input (a source task)" if source is NO_INPUT else "a Feedback input"
        raise TypeError(
            f"a checkpoint records input items: a run on {what} cannot have one; "
            f"call pipeline.with_checkpoint(None), or give the pipeline an iterable of items"
        )
    return Resumed(source, checkpoint, retry_failed)


def _check_branches(specs: tuple[StageSpec, ...], source: Any) -> None:
    """A branch stage is no source task: called with no input, refused (its branches
    would be given the run's placeholder for "no item" as an item)."""
    if source is NO_INPUT and specs and specs[0].branches is not None:
        raise TypeError(
            f"{specs[0].name!r} gives each input item to its branches: it cannot be called "
            f"with no input (a source task); give the pipeline an iterable of items, or put "
            f"a source task before it"
        )


def _not_a_stage(value: Any) -> str:
    if callable(value):
        name = getattr(value, "__name__", repr(value))
        return (
            f"{name!r} is a plain function, not a task: decorate it with @single_task "
            f"(or @batch_task(max_size=...)) to use it as a pipeline stage"
        )
    return (
        f"a pipeline stage must be a task made with @single_task or @batch_task "
        f"(or a Pipeline), got {type(value).__name__}: {value!r}"
    )

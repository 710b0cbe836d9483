"""Task options, declared once, and the frozen description of a stage the engine runs.

Every option a task takes is a field of :class:`TaskOptions`: its default, its validation
(``_CHECKS``) and its type for the decorators (``SingleTaskOptions`` /
``BatchTaskOptions``, kept equal to the fields by a test). ``@single_task``,
``@batch_task``, ``SingleTask(...)``, ``BatchTask(...)`` all go through
:func:`make_options`, so a bad value fails at decoration time, naming the parameter.

The engine never reads the public task classes: a run is built from a tuple of
:class:`StageSpec`, each holding the function, its validated options, its side inputs and
its resources.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Literal, TypedDict

from ._engine._registry import AutoChoice, chunked_kinds, kind_of
from ._engine._registry import check as check_executor
from ._spec_branches import BranchesSpec
from .adaptive import AdaptiveLimit, as_concurrency_limit
from .breaker import CircuitBreaker, as_breaker
from .cache import Cache
from .errors import ErrorAction, ErrorHandler, RetryConfig
from .rate import RateLimit, as_rate_limit
from .retry_after import check_retry_after, read_retry_after

__all__ = [
    "AutoChoice",
    "BatchOnlyOptions",
    "BatchTaskOptions",
    "CommonOptions",
    "SingleTaskOptions",
    "StageSpec",
    "TaskOptions",
    "make_options",
]


@dataclasses.dataclass(frozen=True, slots=True)
class TaskOptions:
    """The validated options of one task (see ``conveyor.decorators`` for their meaning)."""

    on_error: ErrorAction = ErrorAction.FAIL
    retry_attempts: int = 1
    retry_delay: float = 1.0
    retry_exponential_backoff: bool = True
    retry_max_delay: float = 60.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry_if: Callable[[BaseException], bool] | None = None
    retry_jitter: float = 0.1
    retry_after: Callable[[BaseException], float | None] | None = read_retry_after
    error_handler: ErrorHandler | None = None
    task_name: str | None = None
    concurrency_limit: int | AdaptiveLimit | None = None  # ("auto": AdaptiveLimit())
    timeout: float | None = None
    executor: Any = None
    chunk_size: int | None = None
    rate_limit: RateLimit | None = None
    cache: Cache | None = None
    circuit_breaker: CircuitBreaker | None = None
    concurrency_limit_per_key: tuple[Callable[[Any], Hashable], int] | None = None
    priority: Callable[[Any], Any] | None = None
    # Batch tasks only:
    min_size: int = 1
    max_size: int = 1
    max_wait: float | None = None
    key: Callable[[Any], Hashable] | None = None  # one open batch per key(item)
    max_keys: int | None = None  # (with key=: DEFAULT_MAX_KEYS unless given)

    @property
    def retry_config(self) -> RetryConfig:
        return RetryConfig(
            max_attempts=self.retry_attempts,
            base_delay=self.retry_delay,
            exponential_backoff=self.retry_exponential_backoff,
            max_delay=self.retry_max_delay,
            retry_on=self.retry_on,
            retry_if=self.retry_if,
            jitter=self.retry_jitter,
            retry_after=self.retry_after,
        )


class CommonOptions(TypedDict, total=False):
    """The keyword options of both decorators but ``on_error`` (typed on its own, so that
    ``on_error="emit"`` can add :class:`~conveyor.errors.Failure` to a task's type)."""

    retry_attempts: int
    retry_delay: float
    retry_exponential_backoff: bool
    retry_max_delay: float
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    retry_if: Callable[[BaseException], bool] | None
    retry_jitter: float
    retry_after: Callable[[BaseException], float | None] | None
    error_handler: ErrorHandler | None
    task_name: str | None
    concurrency_limit: int | AdaptiveLimit | Literal["auto"] | None
    timeout: float | None
    executor: Any
    chunk_size: int | None
    rate_limit: RateLimit | tuple[int, float] | None
    cache: Cache | None
    circuit_breaker: CircuitBreaker | None
    concurrency_limit_per_key: tuple[Callable[[Any], Hashable], int] | None
    priority: Callable[[Any], Any] | None


class BatchOnlyOptions(CommonOptions, total=False):
    """The batch sizes, and the options both decorators share but ``on_error``."""

    min_size: int
    max_size: int | None
    max_wait: float | None
    key: Callable[[Any], Hashable] | None
    max_keys: int | None


class SingleTaskOptions(CommonOptions, total=False):
    """The keyword options of ``@single_task`` (the fields of :class:`TaskOptions`)."""

    on_error: ErrorAction | str


class BatchTaskOptions(BatchOnlyOptions, total=False):
    """The keyword options of ``@batch_task``: those of single tasks, and batch sizes."""

    on_error: ErrorAction | str


BATCH_ONLY = frozenset({"min_size", "max_size", "max_wait", "key", "max_keys"})
DEFAULT_MAX_KEYS = 1024  # (open batches of a keyed batch task, unless max_keys= is given)
FIELDS = tuple(f.name for f in dataclasses.fields(TaskOptions))


# -- validation ------------------------------------------------------------------------


def _int(minimum: int, *, optional: bool = False) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
        return value

    return check


def _seconds(*, optional: bool = False, positive: bool = False) -> Callable[[str, Any], Any]:
    bound = "> 0" if positive else ">= 0"

    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
        if math.isnan(value) or value < 0 or (positive and value == 0):
            extra = " (or None for none)" if optional else ""
            raise ValueError(f"{name} must be a number of seconds {bound}{extra}, got {value}")
        return float(value)

    return check


def _bool(name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _retry_on(name: str, value: Any) -> Any:
    if isinstance(value, type):
        value = (value,)
    if (
        not isinstance(value, tuple)
        or not value
        or not all(isinstance(t, type) and issubclass(t, Exception) for t in value)
    ):
        raise TypeError(f"{name} must be an exception type or a tuple of them, got {value!r}")
    return value


def _retry_if(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(
            f"{name} must be a function of the exception returning a bool (or None), got "
            f"{value!r}; e.g. retry_if=lambda exc: getattr(exc, 'status', 500) >= 500"
        )
    return value


def _fraction(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction from 0 to 1 (0: no jitter), got {value!r}")
    return float(value)


def _error_handler(name: str, value: Any) -> Any:
    if value is None:
        return None
    method = getattr(value, "handle_error", None)
    if isinstance(value, type) or method is None or not inspect.iscoroutinefunction(method):
        raise TypeError(
            f"{name} must be an ErrorHandler instance with an "
            f"`async def handle_error(...)`, got {value!r}"
        )
    return value


def _task_name(name: str, value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value


def _cache(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, Cache):
        raise TypeError(
            f"{name} must be a conveyor.Cache (or None), got {value!r}; e.g. "
            f"{name}=conveyor.Cache() in memory, or conveyor.Cache('results.db') in SQLite"
        )
    return value


def _per_key(name: str, value: Any) -> Any:
    if value is None:
        return None
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not callable(value[0])
        or isinstance(value[1], bool)
        or not isinstance(value[1], int)
        or value[1] < 1
    ):
        raise TypeError(
            f"{name} must be (key_function, n): at most n calls at once per key, e.g. "
            f"{name}=(lambda url: urlsplit(url).hostname, 2); got {value!r}"
        )
    return value


def _key(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(
            f"{name} must be a function of the item returning a hashable key (one open batch "
            f"per key), or None; e.g. {name}=lambda url: urlsplit(url).hostname; got {value!r}"
        )
    return value


def _priority(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(
            f"{name} must be a function of the item returning a comparable value (higher "
            f"starts first), or None; e.g. {name}=lambda job: job.urgency; got {value!r}"
        )
    return value


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "executor": check_executor,
    "retry_attempts": _int(1),
    "retry_delay": _seconds(),
    "retry_exponential_backoff": _bool,
    "retry_max_delay": _seconds(),
    "retry_on": _retry_on,
    "retry_if": _retry_if,
    "retry_jitter": _fraction,
    "retry_after": check_retry_after,
    "error_handler": _error_handler,
    "task_name": _task_name,
    "concurrency_limit": as_concurrency_limit,
    "timeout": _seconds(optional=True, positive=True),
    "chunk_size": _int(1, optional=True),
    "rate_limit": as_rate_limit,
    "cache": _cache,
    "circuit_breaker": as_breaker,
    "concurrency_limit_per_key": _per_key,
    "priority": _priority,
    "min_size": _int(1),
    "max_size": _int(1, optional=True),
    "max_wait": _seconds(optional=True),
    "key": _key,
    "max_keys": _int(1, optional=True),
}


def _on_error(value: Any, *, batch: bool) -> ErrorAction:
    try:
        action = ErrorAction(value)
    except ValueError:
        choices = "'fail', 'skip_item', 'emit'" + (", 'skip_batch'" if batch else "")
        raise ValueError(f"on_error must be one of {choices}; got {value!r}") from None
    if action is ErrorAction.SKIP_BATCH and not batch:
        raise ValueError(
            "on_error='skip_batch' only applies to @batch_task; "
            "use on_error='skip_item' on a @single_task"
        )
    return action


def make_options(given: Mapping[str, Any], *, batch: bool, where: str) -> TaskOptions:
    """Validate ``given`` (keyword options, as passed to ``where``) into TaskOptions."""
    allowed = FIELDS if batch else tuple(f for f in FIELDS if f not in BATCH_ONLY)
    for key in given:
        if key not in allowed:
            hint = ""
            if key in BATCH_ONLY:
                hint = f" ({key} is an option of @batch_task)"
            raise TypeError(
                f"{where} got an unknown option {key!r}{hint}; "
                f"its options are: {', '.join(allowed)}"
            )
    values = {key: _CHECKS[key](key, value) for key, value in given.items() if key in _CHECKS}
    if "on_error" in given:
        values["on_error"] = _on_error(given["on_error"], batch=batch)
    if batch:
        min_size = values.get("min_size", 1)
        max_size = values.get("max_size")
        if max_size is None:  # as in conveyor-streaming: max_size defaults to min_size
            max_size = min_size
        elif max_size < min_size:
            raise ValueError(f"max_size ({max_size}) must be >= min_size ({min_size})")
        values["max_size"] = max_size
        if values.get("key") is not None:  # (max_keys: its default, only with a key)
            values["max_keys"] = values.get("max_keys") or DEFAULT_MAX_KEYS
        elif values.get("max_keys") is not None:
            raise ValueError(
                f"max_keys={values['max_keys']} bounds the open batches of a keyed batch "
                f"task: give key= too (e.g. key=lambda row: row.table), or drop max_keys"
            )
        _single_only(values)
    executor = values.get("executor")
    if values.get("chunk_size") is not None and not kind_of(executor).chunked:
        raise ValueError(
            f"chunk_size applies to work sent to other processes: use it with "
            f"executor={chunked_kinds()} (got executor={executor!r})"
        )
    return TaskOptions(**values)


def _single_only(values: Mapping[str, Any]) -> None:
    """Per-key limits and priority order single items: a batch task's calls take lists."""
    rate = values.get("rate_limit")
    given = [f"{name}=" for name in ("concurrency_limit_per_key", "priority") if values.get(name)]
    if rate is not None and rate.key is not None:
        given.append("rate_limit=RateLimit(..., key=...)")
    if given:
        raise ValueError(
            f"{given[0]} applies to @single_task only: a batch task's calls take lists of "
            f"items, of any keys. A batch task takes rate_limit= without key= (smooth with "
            f"burst=) and concurrency_limit=; to pace items per key, give them a @single_task."
        )


@dataclasses.dataclass(frozen=True, slots=True)
class StageSpec:
    """What the engine needs of one stage: everything is fixed when the run starts.

    ``args``/``kwargs`` are side inputs (resolved at the start of every run), ``resources``
    run-scoped resources (opened before the first call, closed when the run ends, passed
    as keyword arguments); ``branches``: ``conveyor.parallel``'s, ``conveyor.route``'s."""

    func: Callable[..., Any]
    name: str
    batch: bool
    options: TaskOptions
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    resources: tuple[tuple[str, Any], ...] = ()
    branches: BranchesSpec | None = None

    def __post_init__(self) -> None:
        executor = self.options.executor
        kind = kind_of(executor)
        if self.resources and not kind.takes_resources:
            # Pickling a resource would give every worker a copy of its own: the calls
            # would use the copies and the run's resource would see none of them.
            names = ", ".join(repr(key) for key, _ in self.resources)
            where = repr(executor) if isinstance(executor, str) else type(executor).__name__
            raise TypeError(
                f"task {self.name!r} has resources ({names}) and executor={where}: "
                f"its resource {self.resources[0][0]!r} lives in this process and cannot "
                f"be sent to a worker process (each worker would get a copy, and the "
                f"run's resource would see none of the calls). A task with resources "
                f"runs on the loop or on threads: use executor='thread' (or the default), "
                f"or give the CPU-bound part a task of its own, without resources, on "
                f"executor={where}."
            )
        if self.options.cache is not None and (
            inspect.isgeneratorfunction(self.func) or inspect.isasyncgenfunction(self.func)
        ):
            raise TypeError(
                f"task {self.name!r} is a generator function and has cache=...: its values "
                f"are read lazily, one at a time, and are not cached. Return a list "
                f"instead of yielding, or drop cache=."
            )
        if not kind.takes_async and (
            inspect.iscoroutinefunction(self.func) or inspect.isasyncgenfunction(self.func)
        ):
            raise TypeError(
                f"task {self.name!r} is an async function, and executor={executor!r} runs "
                f"plain functions in other processes. Keep async code on the event loop "
                f"(the default executor) and give the blocking or CPU-bound part a task of "
                f"its own, a plain def, on executor={executor!r}."
            )

    @property
    def is_async(self) -> bool:
        """Whether calls return coroutines (``async def``; not async generators)."""
        return inspect.iscoroutinefunction(self.func)

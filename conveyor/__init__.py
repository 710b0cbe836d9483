"""conveyor: streaming, concurrent async pipelines.

Decorate functions with :func:`single_task` / :func:`batch_task`, compose them with ``|``,
and call the pipeline on any iterable or async iterable::

    pipeline = fetch | rerank_batch | enrich
    async for result in pipeline(items): ...          # input order, as early as possible
    async for result in pipeline.as_completed(items): ...   # completion order
"""

from ._engine._origin import current_keys
from .adaptive import AdaptiveLimit
from .breaker import CircuitBreaker, CircuitOpenError
from .cache import Cache
from .checkpoint import Checkpoint, CheckpointBusy, CheckpointSummary
from .compose import parallel, route
from .context import (
    ContextManager,
    ExecutionMode,
    PipelineContext,
    get_current_context,
    set_current_context,
    with_context,
)
from .decorators import batch_task, single_task
from .errors import ErrorAction, ErrorHandler, Failure, LoggingErrorHandler, RetryConfig
from .feedback import Feedback
from .merge import merge
from .pipeline import Pipeline
from .rate import RateLimit
from .retry_after import read_retry_after
from .runner import run
from .stream import AsyncStream
from .tasks import BaseTask, BatchTask, SingleTask

__all__ = [
    "AdaptiveLimit",
    "AsyncStream",
    "BaseTask",
    "BatchTask",
    "Cache",
    "Checkpoint",
    "CheckpointBusy",
    "CheckpointSummary",
    "CircuitBreaker",
    "CircuitOpenError",
    "ContextManager",
    "ErrorAction",
    "ErrorHandler",
    "ExecutionMode",
    "Failure",
    "Feedback",
    "LoggingErrorHandler",
    "Pipeline",
    "PipelineContext",
    "RateLimit",
    "RetryConfig",
    "SingleTask",
    "batch_task",
    "current_keys",
    "get_current_context",
    "merge",
    "parallel",
    "read_retry_after",
    "route",
    "run",
    "set_current_context",
    "single_task",
    "with_context",
]

__version__ = "0.1.0"

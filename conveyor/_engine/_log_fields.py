"""The fields of the current run's log records, for code that logs for a run without
holding it (see ``_log``): the ``"auto"`` executor, process chunks, ``LoggingErrorHandler``.

``_log.RunLog.install`` puts the run's fields in the run's :mod:`contextvars` context, in
which every call runs. This module imports nothing of conveyor, so that ``conveyor.errors``
(which ``_log`` imports) can use it.
"""

from __future__ import annotations

import contextvars
from typing import Any

_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "conveyor_log_fields", default=None
)


def install(context: contextvars.Context, fields: dict[str, Any]) -> None:
    """Make ``fields`` the run fields of code running in ``context``."""
    context.run(_current.set, fields)


def run_fields(event: str, **fields: Any) -> dict[str, Any]:
    """The ``extra=`` of a record of the current run: ``event``, the run's fields (none
    outside a run), then ``fields``."""
    run = _current.get()
    return {"conveyor_event": event, **(run or {}), **fields}

"""The executor a task's ``executor`` option names, for one run.

The option is validated once, in ``_spec``; here it becomes an object of the executor
seam (``_calls.Executor``), a new one per run:

==========================================  =============================================
option                                      executor
==========================================  =============================================
``None``, ``"inline"``                      :data:`~._calls.INLINE` (on the loop)
``"thread"``, ``"thread:N"``                :class:`~._threads.RunThreads` (run-scoped)
``"process"``, ``"process:N"``              :class:`~._pools.Processes` (run-scoped)
a ``ThreadPoolExecutor``                    :class:`~._pools.PoolExecutor` (per item)
any other ``concurrent.futures.Executor``   :class:`~._pools.Processes` (chunked)
a ``dask.distributed.Client``               :class:`~._dask.DaskCalls` (chunked)
``"auto"``                                  :class:`~._auto.Auto` (measured)
an object with ``bind``                     itself
==========================================  =============================================
"""

from __future__ import annotations

import concurrent.futures

from .._spec import AutoChoice, StageSpec, is_dask_client
from ._auto import Auto
from ._calls import INLINE, Executor
from ._dask import DaskCalls
from ._pools import PoolExecutor, Processes, cores
from ._threads import THREADS, RunThreads

__all__ = ["executor_for"]


def executor_for(spec: StageSpec) -> Executor:
    option = spec.options.executor
    if option is None or option == "inline":
        return INLINE
    if isinstance(option, AutoChoice):
        return Auto(spec, option)
    if isinstance(option, str):
        kind, _, workers = option.partition(":")
        if kind == "thread":
            return RunThreads(int(workers) if workers else THREADS)
        return Processes(spec, int(workers) if workers else cores())
    if isinstance(option, concurrent.futures.ThreadPoolExecutor):
        return PoolExecutor(option)
    if isinstance(option, concurrent.futures.Executor):
        return Processes(spec, pool=option)
    if is_dask_client(option):
        return DaskCalls(spec, option)
    return option  # type: ignore[no-any-return]

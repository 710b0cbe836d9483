"""What cannot be sent to another process, said plainly: the errors of the pickling rules.

A task on a process executor sends its function (with its side inputs) once per chunk,
and every item and result, through :mod:`pickle`. Pickle sends a function *by name*: the
worker imports its module and looks it up. So a lambda, a function defined inside
another function (a closure), or a function of an interactive session cannot travel;
neither can an open resource (a session, a connection) or a lock. These errors say which
part failed and what to do instead. (A Dask client pickles functions with cloudpickle,
which does send lambdas and closures by value.)
"""

from __future__ import annotations

import functools
import importlib
import io
import pickle
import sys
from collections.abc import Callable
from types import FunctionType
from typing import Any

from ..errors import short_repr

__all__ = [
    "coroutine_returned",
    "dump_function",
    "dumps",
    "unpicklable_item",
    "unpicklable_result",
]

FIX = (
    "Define the function with def at the top level of an importable module, pass only "
    "picklable side inputs, or use executor='thread' (threads need no pickling)."
)


class _Pickler(pickle.Pickler):
    """Pickle, and one more rule: a function decorated in place (``@single_task(...)
    def f``) is sent as "the function of the task ``module.f``", since the name ``f``
    now holds the task, not the function."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, FunctionType):
            name: str = obj.__qualname__
            holder = _lookup(sys.modules.get(obj.__module__), name)
            if holder is not obj and getattr(holder, "func", None) is obj:
                return _decorated, (obj.__module__, name)
        return NotImplemented


def dumps(value: Any) -> bytes:
    """``pickle.dumps`` with the rule of :class:`_Pickler`."""
    buffer = io.BytesIO()
    _Pickler(buffer, pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def _lookup(module: Any, qualname: str) -> Any:
    value = module
    for part in qualname.split("."):
        value = getattr(value, part, None)
    return value


def _decorated(module: str, qualname: str) -> Any:
    """(In the worker.) The function of the task at ``module.qualname``."""
    return _lookup(importlib.import_module(module), qualname).func


def dump_function(
    invoke: Callable[[Any], Any],
    task: str,
    executor: str,
    resources: tuple[str, ...] = (),
    dumps: Callable[[Any], bytes] = dumps,
) -> bytes:
    """``invoke`` pickled, or a TypeError naming the task, the part that failed, and why."""
    try:
        return dumps(invoke)
    except Exception as exc:
        why = _culprit(invoke, resources, dumps)
        error = TypeError(f"task {task!r} cannot run on executor {executor}: {why}. {FIX}")
        raise error from exc


def _culprit(invoke: Any, resources: tuple[str, ...], dumps: Callable[[Any], bytes]) -> str:
    """Which part of ``invoke`` (a function, or conveyor's partial binding its arguments)
    cannot be pickled, and why."""
    if isinstance(invoke, functools.partial) and len(invoke.args) == 3:
        func, args, kwargs = invoke.args  # (see _bind: partial(_with_item, func, args, kwargs))
        if not _pickles(func, dumps):
            return why_function(func)
        for index, value in enumerate(args):
            if not _pickles(value, dumps):
                return f"its side input #{index + 1}, {_what(value)}, cannot be pickled"
        for key, value in kwargs.items():
            if not _pickles(value, dumps):
                if key in resources:
                    return (
                        f"its resource {key!r} ({_what(value)}) lives in this process and "
                        f"cannot be sent to a worker process; a task with resources runs on "
                        f"the loop or on threads"
                    )
                return f"its side input {key!r}, {_what(value)}, cannot be pickled"
    return why_function(invoke)


def why_function(func: Any) -> str:
    """Why pickle cannot send ``func`` (see the module doc)."""
    name = getattr(func, "__qualname__", None) or repr(func)
    if getattr(func, "__name__", None) == "<lambda>":
        return f"its function is a lambda ({name}), and pickle sends functions by name"
    if "<locals>" in name:
        outer = name.split(".<locals>")[0]
        return (
            f"its function {name} is defined inside {outer}() (a local function or "
            f"closure), and pickle sends functions by name"
        )
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    if module is not None and module.__name__ == "__main__" and not hasattr(module, "__file__"):
        return (
            f"its function {name} is defined in an interactive session, which worker "
            f"processes cannot import"
        )
    return f"its function {_what(func)} cannot be pickled"


def _pickles(value: Any, dumps: Callable[[Any], bytes]) -> bool:
    try:
        dumps(value)
    except Exception:
        return False
    return True


def _what(value: Any) -> str:
    return f"{type(value).__qualname__} {short_repr(value)}"


def unpicklable_item(item: Any, exc: Exception) -> TypeError:
    error = TypeError(
        f"an item of type {type(item).__qualname__} cannot be pickled to be sent to a worker "
        f"process ({type(exc).__name__}: {exc}). Convert items to plain data before this "
        f"task (numbers, str, bytes, lists, dicts, DataFrames, or classes defined at the "
        f"top level of a module), or use executor='thread'."
    )
    error.__cause__ = exc
    return error


def unpicklable_result(value: Any, exc: Exception) -> TypeError:
    return TypeError(
        f"the result, of type {type(value).__qualname__}, cannot be pickled to be sent back "
        f"from the worker process ({type(exc).__name__}: {exc}). Return plain data "
        f"(numbers, str, bytes, lists, dicts, DataFrames, or classes defined at the top "
        f"level of a module), or use executor='thread'."
    )


def coroutine_returned(coroutine: Any) -> TypeError:
    """(In a worker.) A coroutine cannot travel back, and nothing there could await it."""
    return TypeError(
        f"the function returned a coroutine ({coroutine.__qualname__}) in a worker process, "
        f"where nothing can await it: a process executor runs plain functions. Keep async "
        f"code on the loop (the default executor) and give the CPU-bound part a task of "
        f"its own with a plain def."
    )

"""``to_dataframe``: a run's results, in order, as one pandas DataFrame.

The results must all be of one kind; each kind has one rule:

- **DataFrames** are concatenated with ``pandas.concat`` (their indexes kept, columns
  the union of theirs: a column some frames lack is NaN in their rows);
- **Series** are pieces of one column: concatenated (indexes kept) into a one-column
  frame named after the first Series (``0`` if it has no name);
- **numpy arrays** are concatenated along their first axis: 1-D arrays into one column
  ``0``, 2-D arrays into rows with columns ``0, 1, ...``; a fresh RangeIndex;
- **mappings** (dicts) are rows, their keys the columns; a fresh RangeIndex;
- **scalars** (numbers, strings, bytes, bools, dates, numpy scalars) make one column,
  ``value``; a fresh RangeIndex.

Anything else, and any mix of kinds, raises ``TypeError`` naming the kinds and where
they were found. No results give an empty DataFrame. The pieces are gathered in a list
and joined once (one concatenation, not one per result). pandas is imported only here.
"""

from __future__ import annotations

import datetime
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["to_dataframe"]

_SCALARS = (numbers.Number, str, bytes, datetime.date, datetime.timedelta)


def _kind(value: Any, pandas: Any, numpy: Any) -> str:
    if isinstance(value, pandas.DataFrame):
        return "DataFrame"
    if isinstance(value, pandas.Series):
        return "Series"
    if numpy is not None and isinstance(value, numpy.ndarray):
        return "ndarray"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, _SCALARS) or (numpy is not None and isinstance(value, numpy.generic)):
        return "scalar"
    raise TypeError(
        f"collect_dataframe() cannot make rows of a {type(value).__name__} ({value!r:.80}): "
        "return DataFrames, Series, numpy arrays, dicts (one per row) or scalars"
    )


def to_dataframe(results: list[Any]) -> pd.DataFrame:
    """``results`` as one DataFrame, following the rules of this module's docstring."""
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("collect_dataframe() needs pandas: pip install pandas") from exc
    import numpy  # (pandas depends on it)

    if not results:
        return pandas.DataFrame()
    kind = _kind(results[0], pandas, numpy)
    for position, value in enumerate(results):
        other = _kind(value, pandas, numpy)
        if other != kind:
            raise TypeError(
                f"collect_dataframe() needs results of one kind: result 0 is a {kind}, "
                f"result {position} a {other} ({type(value).__name__}); make every "
                "result the same kind (e.g. a DataFrame)"
            )
    if kind == "DataFrame":
        return pandas.concat(results)
    if kind == "Series":
        column = pandas.concat(results)
        return column.to_frame(name=results[0].name if results[0].name is not None else 0)
    if kind == "ndarray":
        return pandas.DataFrame(numpy.concatenate(results))
    if kind == "mapping":
        return pandas.DataFrame.from_records(results)
    return pandas.DataFrame({"value": results})

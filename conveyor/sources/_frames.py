"""Chunks of tables as a pipeline's input: a DataFrame in memory, a CSV or Parquet file.

``dataframe_chunks`` slices a frame that is already in memory, on the event loop (a
slice is a view made in microseconds: no thread is worth it). ``read_csv_chunks`` and
``read_parquet_chunks`` read a file one chunk at a time on a thread of their own (a
``ThreadSource``: see :mod:`conveyor.sources._reading`), only as fast as the run takes
the chunks. Every one has ``figures()`` with the keys every source has
(``_reading.READING_FIGURES``) and ``rows_read``, ``rows_total``.

pandas (and pyarrow, for Parquet) are imported when a source is made, not with conveyor.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._reading import ThreadSource, reading_figures

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CsvChunks",
    "DataFrameChunks",
    "ParquetChunks",
    "dataframe_chunks",
    "read_csv_chunks",
    "read_parquet_chunks",
]


def _import_pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("conveyor's DataFrame sources need pandas: pip install pandas") from exc
    return pandas


def _check_rows(rows: object) -> int:
    if isinstance(rows, bool) or not isinstance(rows, int):
        raise TypeError(
            f"rows must be an int (the rows per chunk), got {rows!r}; e.g. rows=100_000"
        )
    if rows < 1:
        raise ValueError(f"rows must be >= 1 (the rows per chunk), got {rows}; e.g. rows=100_000")
    return rows


def _check_path(path: object, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"path must be a str or a path-like object naming a {what} file, "
            f"got {type(path).__name__}"
        )
    found = Path(path)
    if not found.is_file():
        problem = "is a directory, not" if found.is_dir() else "does not exist: no"
        raise FileNotFoundError(f"{what} file {str(found)!r} {problem} a file to read")
    return found


# -- a frame in memory ---------------------------------------------------------------------


class DataFrameChunks:
    """Consecutive row slices of a DataFrame (or Series): ``df.iloc[i : i + rows]``.

    Each chunk keeps the frame's own index and is a slice of it, made when it is taken
    (lazily, on the event loop: slicing is cheap). ``len()`` is the number of chunks.
    Iterable with ``for`` and ``async for``, as often as you like; the figures count
    every iteration.
    """

    def __init__(self, frame: Any, rows: int) -> None:
        self.frame = frame
        self.rows = rows
        self.items_read = 0
        self.rows_read = 0
        self.rows_total = len(frame)

    @property
    def chunks_read(self) -> int:
        """The chunks handed out so far: ``items_read``, by its name for tables."""
        return self.items_read

    def __len__(self) -> int:
        return -(-self.rows_total // self.rows)

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, self.rows_total, self.rows):
            chunk = self.frame.iloc[start : start + self.rows]
            self.items_read += 1
            self.rows_read += len(chunk)
            yield chunk

    async def __aiter__(self) -> AsyncIterator[Any]:
        for chunk in self:
            yield chunk

    def figures(self) -> dict[str, Any]:
        """The keys every source has (``_reading.READING_FIGURES``), then ``rows_read`` and
        ``rows_total``. Nothing is read from a file -- the frame is in memory, and a chunk
        is a view of it -- so ``bytes_read``, ``bytes_total``, ``mb_per_second`` and
        ``progress`` are None, and ``seconds_reading`` is 0.0; ``rows_read / rows_total``
        is the progress of one iteration."""
        common = reading_figures(self.items_read, None, None, 0.0, ended=False)
        return {**common, "rows_read": self.rows_read, "rows_total": self.rows_total}

    def __repr__(self) -> str:
        return f"<DataFrameChunks {self.rows_total} rows in {len(self)} chunks of {self.rows}>"


def dataframe_chunks(frame: pd.DataFrame | pd.Series, rows: int) -> DataFrameChunks:
    """The rows of ``frame`` in chunks of ``rows`` (the last one may be shorter).

    Slices are taken lazily, on the event loop, and keep ``frame``'s index.
    """
    if not (hasattr(frame, "iloc") and hasattr(frame, "__len__")):
        raise TypeError(
            f"frame must be a pandas DataFrame or Series, got {type(frame).__name__}; "
            "for a file use read_csv_chunks() or read_parquet_chunks()"
        )
    return DataFrameChunks(frame, _check_rows(rows))


# -- a table file, read on a thread ------------------------------------------------------------


class TableFile(ThreadSource[Any]):
    """A table file read one chunk (a DataFrame) per ``_fetch`` on the source's thread.

    Adds to the figures of every source ``rows_read`` (rows in the chunks handed out)
    and ``rows_total`` (None unless the format says so cheaply). ``chunks_read`` is
    ``items_read`` by its name for tables.
    """

    _kind = "table"

    def __init__(self, path: Path, rows: int) -> None:
        super().__init__()
        self.path = path
        self.rows = rows
        self.rows_read = 0
        self.rows_total: int | None = None
        self._pandas = _import_pandas()

    @property
    def _what(self) -> str:
        return f"the {self._kind} file {str(self.path)!r}"

    @property
    def chunks_read(self) -> int:
        """The chunks handed out so far (``items_read``)."""
        return self.items_read

    async def __anext__(self) -> Any:
        chunk = await super().__anext__()
        self.rows_read += len(chunk)
        return chunk

    def figures(self) -> dict[str, Any]:
        """The keys every source has (``_reading.READING_FIGURES``), then ``rows_read`` and
        ``rows_total``."""
        return {**super().figures(), "rows_read": self.rows_read, "rows_total": self.rows_total}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._pool is not None else "not started"
        return f"<{type(self).__name__} {str(self.path)!r} {state}, {self.rows_read} rows read>"


# -- CSV -------------------------------------------------------------------------------------


class CsvChunks(TableFile):
    """A CSV file read by ``pandas.read_csv(path, chunksize=rows, **kwargs)`` on a thread.

    Chunks carry a running RangeIndex (0 to rows-1, then rows to 2*rows-1, ...), as
    pandas gives them, unless ``index_col`` says otherwise. ``bytes_read`` is the
    parser's position in the file; for a compressed file, whose position pandas does not
    tell in the file's own bytes, it is None until the end, then ``bytes_total``.
    ``rows_total`` stays None (it is not known without reading the file).
    """

    _kind = "CSV"

    def __init__(self, path: Path, rows: int, kwargs: dict[str, Any]) -> None:
        super().__init__(path, rows)
        self._kwargs = kwargs
        self._reader: Any = None

    def _fetch(self) -> list[Any]:
        reader = self._reader
        if reader is None:
            self.bytes_total = os.stat(self.path).st_size
            reader = self._reader = self._pandas.read_csv(
                self.path, chunksize=self.rows, **self._kwargs
            )
        chunk = next(reader, None)
        self.bytes_read = self._position()
        if chunk is None:
            if self.bytes_read is None:  # read to its end: all of it consumed
                self.bytes_read = self.bytes_total
            return []
        return [chunk]

    def _position(self) -> int | None:
        if self._reader.handles.compression.get("method") is not None:
            return None  # (tell() counts decompressed bytes, not the file's)
        try:
            return int(self._reader.handles.handle.tell())
        except (AttributeError, OSError, ValueError):  # (no handle that can tell)
            return None

    def _release(self) -> None:
        if self._reader is not None:
            self._reader.close()


def read_csv_chunks(path: str | os.PathLike[str], rows: int = 100_000, **kwargs: Any) -> CsvChunks:
    """Read the CSV file ``path`` in chunks of ``rows`` rows, on a thread.

    ``kwargs`` go to ``pandas.read_csv`` (``sep``, ``usecols``, ``dtype``, ``parse_dates``,
    ``nrows``...), except ``chunksize`` and ``iterator``: ``rows`` is the chunk size.
    The file is opened on the first read, not here; here the arguments are checked.
    """
    for name in ("chunksize", "iterator"):
        if name in kwargs:
            raise TypeError(f"read_csv_chunks() sets {name} itself: give rows=N instead")
    return CsvChunks(_check_path(path, "CSV"), _check_rows(rows), kwargs)


# -- Parquet ---------------------------------------------------------------------------------


class ParquetChunks(TableFile):
    """A Parquet file read by ``pyarrow.parquet.ParquetFile.iter_batches`` on a thread,
    each batch turned into a DataFrame there.

    A chunk has at most ``rows`` rows: all but the last have exactly ``rows`` with recent
    pyarrow versions, while older ones also end a chunk at the end of each row group.
    Chunks with pandas' default index get a running RangeIndex, as ``read_csv_chunks``
    gives. ``rows_total`` is known once the file is open (from its metadata).
    ``bytes_read`` is None until the end (pyarrow does not tell how far it has read),
    then ``bytes_total``.
    """

    _kind = "Parquet"

    def __init__(self, path: Path, rows: int, columns: Sequence[str] | None) -> None:
        super().__init__(path, rows)
        self.columns = None if columns is None else list(columns)
        self._parquet = _import_parquet()
        self._file: Any = None
        self._batches: Iterator[Any] | None = None
        self._next_row = 0  # the thread's count (rows_read is the loop's)

    def _fetch(self) -> list[Any]:
        if self._batches is None:
            self.bytes_total = os.stat(self.path).st_size
            self.bytes_read = None
            self._file = self._parquet.ParquetFile(self.path)
            self.rows_total = int(self._file.metadata.num_rows)
            self._batches = self._file.iter_batches(batch_size=self.rows, columns=self.columns)
        batch = next(self._batches, None)
        if batch is None:
            self.bytes_read = self.bytes_total  # read to its end: all of it consumed
            return []
        frame = batch.to_pandas()
        index = frame.index
        if isinstance(index, self._pandas.RangeIndex) and index.start == 0 and index.step == 1:
            start = self._next_row
            frame.index = self._pandas.RangeIndex(start, start + len(frame))
        self._next_row += len(frame)
        return [frame]

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()


def _import_parquet() -> Any:
    try:
        import pyarrow.parquet
    except ImportError as exc:
        raise ImportError(
            "read_parquet_chunks() needs pyarrow: pip install 'conveyor[parquet]'"
        ) from exc
    return pyarrow.parquet


def read_parquet_chunks(
    path: str | os.PathLike[str], rows: int = 100_000, columns: Sequence[str] | None = None
) -> ParquetChunks:
    """Read the Parquet file ``path`` in chunks of at most ``rows`` rows, on a thread.

    ``columns`` reads only those columns. Needs pyarrow (``pip install
    'conveyor[parquet]'``). The file is opened on the first read, not here.
    """
    if columns is not None and (isinstance(columns, str) or not isinstance(columns, Sequence)):
        raise TypeError(f"columns must be a list of column names or None, got {columns!r}")
    return ParquetChunks(_check_path(path, "Parquet"), _check_rows(rows), columns)

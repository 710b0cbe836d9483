"""Sources: inputs for pipelines that read files and tables without blocking the loop.

Each source is an async iterable to pass as a pipeline's input: ``pipeline(source)``.
Files are read off the event loop, on a thread the source owns, one step ahead of what
the run has taken (the next read overlaps the work on this one) and no more, so the
run's window paces the reading: a slow consumer holds the source back instead of letting
it read the whole input ahead. Closing the run
(``break``, an error, ``aclose()``) waits for a read in progress, then closes the file
and ends the thread. A frame already in memory is sliced on the loop (``dataframe_chunks``:
a slice costs microseconds). See ``docs/dataframes.md``.

- :func:`dataframe_chunks` -- row slices of an in-memory DataFrame or Series;
- :func:`read_csv_chunks` -- a CSV file through ``pandas.read_csv(chunksize=...)``;
- :func:`read_parquet_chunks` -- a Parquet file through pyarrow (``conveyor[parquet]``);
- :func:`file_chunks`, :func:`file_lines` -- a file's bytes in chunks, or its lines;
- :func:`files` -- the files below a directory, of a glob, or of a list of paths.

Each source counts what it read; ``figures()`` returns it as a plain dict with the same
keys for every source (``items_read``, ``bytes_read``, ``bytes_total``,
``seconds_reading``, ``mb_per_second``, ``progress``: see ``_reading.READING_FIGURES``
and ``docs/files.md``), then its own (``rows_read``, ``rows_total``; ``files_read``).

pandas and pyarrow are imported only when a source is made.
"""

from __future__ import annotations

from ._files import FileChunks, FileLines, file_chunks, file_lines
from ._frames import (
    CsvChunks,
    DataFrameChunks,
    ParquetChunks,
    dataframe_chunks,
    read_csv_chunks,
    read_parquet_chunks,
)
from ._paths import Files, files

__all__ = [
    "CsvChunks",
    "DataFrameChunks",
    "FileChunks",
    "FileLines",
    "Files",
    "ParquetChunks",
    "dataframe_chunks",
    "file_chunks",
    "file_lines",
    "files",
    "read_csv_chunks",
    "read_parquet_chunks",
]

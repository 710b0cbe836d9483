"""Sources: inputs for pipelines that read files and tables without blocking the loop.

Each source is an async iterable to pass as a pipeline's input: ``pipeline(source)``.
Reading happens off the event loop, on a thread, one chunk at a time, so the run's
window (``max_in_flight``, ``max_in_flight_bytes``) paces the reading: a slow consumer
holds the source back instead of letting it read the whole input ahead. Closing the run
(``break``, an error, ``aclose()``) closes the source and the file it reads.
"""

from __future__ import annotations

from ._files import FileChunks, FileLines, file_chunks, file_lines
from ._paths import Files, files

__all__: list[str] = [
    "FileChunks",
    "FileLines",
    "Files",
    "file_chunks",
    "file_lines",
    "files",
]

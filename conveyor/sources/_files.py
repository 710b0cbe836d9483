"""``file_chunks`` and ``file_lines``: one file's bytes or lines, read on a thread.

Both return a source (a one-shot async iterator, a ``ThreadSource``: see ``_reading``):
the file is opened at the first ``anext()``, on the source's own thread, read there a
block at a time as the consumer asks for more, and closed on that thread when the file
is exhausted, when a read fails, or when the source is closed (``aclose()``; a pipeline
run closes its input however it ends). The event loop never waits on the disk.

Arguments are checked when the source is made, so a wrong path or size fails at the line
that names it, not somewhere inside a run.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import IO, Any, AnyStr, Generic

from ._reading import ThreadSource

StrPath = str | os.PathLike[str]

CHUNK = 1 << 20
"""``file_chunks``'s default chunk size: 1 MiB."""

BLOCK = 1 << 16
"""``file_lines``'s default block size: 64 KiB read at a time, then split into lines."""


def check_size(function: str, name: str, value: Any) -> int:
    """``value`` as a count of bytes, or an error naming ``function(name=...)``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{function}({name}=...) must be an int >= 1 (bytes), got {type(value).__name__}: "
            f"{value!r}; write e.g. {name}=1 << 20 for 1 MiB"
        )
    if value < 1:
        raise ValueError(f"{function}({name}=...) must be >= 1 (bytes), got {value}")
    return value


def check_path(function: str, path: Any) -> Path:
    """``path`` as a Path, or an error naming the argument and what to do."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"{function}(path) must be a str or os.PathLike (e.g. pathlib.Path), got "
            f"{type(path).__name__}: {path!r}"
        )
    return Path(path)


def check_file(function: str, path: Any) -> Path:
    """A path to an existing file (checked now), or an error saying what to do instead."""
    checked = check_path(function, path)
    if checked.is_dir():
        raise IsADirectoryError(
            f"{function}(path): {str(checked)!r} is a directory; to read the files in it, "
            f"feed files({str(checked)!r}) to a task that reads each path"
        )
    if not checked.exists():
        raise FileNotFoundError(
            f"{function}(path): no such file: {str(checked)!r} (relative paths start in "
            f"the current directory, {os.getcwd()!r}); check the path, or make the file first"
        )
    return checked


class FileSource(ThreadSource[AnyStr], Generic[AnyStr]):
    """A source reading one file in binary mode, on its thread; see ``ThreadSource``."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._file: IO[bytes] | None = None

    @property
    def _what(self) -> str:
        return f"{str(self.path)!r}"

    def _read(self, size: int) -> bytes:
        """On the thread: up to ``size`` bytes (fewer only at the end); opens the file."""
        file = self._file
        if file is None:
            file = self._file = open(self.path, "rb")  # noqa: SIM115  (closed by _release)
            self.bytes_total = os.fstat(file.fileno()).st_size
        data = file.read(size)  # buffered: reads until `size` bytes or the end
        self.bytes_read = (self.bytes_read or 0) + len(data)
        return data

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._file is not None else "not started"
        return f"<{type(self).__name__} {str(self.path)!r} {state}>"


class FileChunks(FileSource[bytes]):
    """The bytes of a file, in chunks of ``size`` bytes; made by :func:`file_chunks`."""

    _thread_name = "conveyor-file_chunks"

    def __init__(self, path: Path, size: int) -> None:
        super().__init__(path)
        self.size = size

    def _fetch(self) -> list[bytes]:
        chunk = self._read(self.size)
        return [chunk] if chunk else []


class FileLines(FileSource[AnyStr], Generic[AnyStr]):
    """The lines of a file, as ``str`` (or ``bytes``); made by :func:`file_lines`."""

    _thread_name = "conveyor-file_lines"

    def __init__(
        self, path: Path, encoding: str | None, errors: str, keepends: bool, block: int
    ) -> None:
        super().__init__(path)
        self.block = block
        self.keepends = keepends
        # An incremental decoder keeps a character split across two blocks for the next.
        self._decoder = codecs.getincrementaldecoder(encoding)(errors) if encoding else None
        self._pending: list[Any] = []  # the start of a line that continues in a later block
        self._at_end = False

    def _fetch(self) -> list[AnyStr]:
        while not self._at_end:
            data = self._read(self.block)
            self._at_end = not data
            lines = self._split(self._decode(data))
            if lines:
                return lines
        return []

    def _decode(self, data: bytes) -> Any:
        decoder = self._decoder
        return data if decoder is None else decoder.decode(data, final=self._at_end)

    def _split(self, text: Any) -> list[Any]:
        # Lines end at "\n"; a "\r" right before it is part of the ending (Windows), so a
        # "\r\n" split across two blocks is still one ending. A lone "\r" is not one.
        binary = self._decoder is None
        newline: Any = b"\n" if binary else "\n"
        empty: Any = newline[:0]
        pending: list[Any] = self._pending
        pieces = text.split(newline)
        if len(pieces) == 1:  # no line ends in this block
            if text:
                pending.append(text)
            lines = []
        else:
            if pending:
                pieces[0] = empty.join([*pending, pieces[0]])
                pending.clear()
            if pieces[-1]:
                pending.append(pieces[-1])
            lines = pieces[:-1]
            if self.keepends:
                lines = [line + newline for line in lines]
            else:
                cr = b"\r" if binary else "\r"
                lines = [line[:-1] if line.endswith(cr) else line for line in lines]
        if self._at_end and pending:  # the last line, which has no newline
            lines.append(empty.join(pending))
            pending.clear()
        return lines


def file_chunks(path: StrPath, size: int = CHUNK) -> FileChunks:
    """The bytes of the file at ``path``, as chunks of ``size`` bytes, read on a thread.

    Every chunk holds exactly ``size`` bytes but the last, which may be shorter; the
    chunks joined are the file. An empty file yields nothing. The file is opened in
    binary mode at the first ``anext()`` (its size then is ``bytes_total``), read one
    chunk per ``anext()``, never ahead, on a thread of the source's own, and closed when
    it is exhausted, when a read fails, or on ``aclose()``, after any read in progress.

    The result is an async iterator, consumed once: pass it to a pipeline,
    ``pipeline(file_chunks(path))``, or iterate it with ``async for``. ``figures()``
    reports the chunks and bytes read, the time spent reading, and the progress (the
    keys every source has: ``conveyor.sources._reading.READING_FIGURES``).

    Raises at once: ``TypeError``/``ValueError`` for a ``size`` that is not an int >= 1,
    ``FileNotFoundError`` if ``path`` does not exist, ``IsADirectoryError`` if it is a
    directory (use :func:`files`).
    """
    checked = check_file("file_chunks", path)
    return FileChunks(checked, check_size("file_chunks", "size", size))


def file_lines(
    path: StrPath,
    encoding: str = "utf-8",
    errors: str = "strict",
    keepends: bool = False,
    *,
    binary: bool = False,
    block: int = BLOCK,
) -> FileLines[Any]:
    """The lines of the file at ``path``, in order, read and split on a thread.

    A line ends at ``"\\n"`` or ``"\\r\\n"`` (a lone ``"\\r"`` does not end one); the
    ending is removed unless ``keepends`` is true. A last line without an ending is
    yielded too; an empty file yields nothing. Lines are ``str`` decoded with
    ``encoding`` and ``errors`` (as ``open()`` takes them), or ``bytes`` with
    ``binary=True`` (``encoding`` and ``errors`` are then unused).

    The file is read ``block`` bytes at a time (64 KiB by default) on a thread of the
    source's own, which also decodes and splits each block, so the event loop only hands
    out lines; a character split across two blocks is decoded whole. A decoding error
    (with ``errors="strict"``) closes the file and raises ``UnicodeDecodeError`` to the
    consumer, in place of the lines of the block it is in. Opening and closing are as for
    :func:`file_chunks`.

    Raises at once: ``LookupError`` for an unknown ``encoding`` or ``errors`` handler,
    ``TypeError``/``ValueError`` for a bad ``block``, ``FileNotFoundError`` /
    ``IsADirectoryError`` as :func:`file_chunks` does.
    """
    checked = check_file("file_lines", path)
    block = check_size("file_lines", "block", block)
    if binary:
        return FileLines[bytes](checked, None, errors, keepends, block)
    try:
        codecs.lookup(encoding)
        codecs.lookup_error(errors)
    except (LookupError, TypeError) as exc:
        raise LookupError(
            f"file_lines(encoding={encoding!r}, errors={errors!r}): {exc}; see the codecs "
            "module for the names (e.g. encoding='utf-8', errors='replace')"
        ) from None
    return FileLines[str](checked, encoding, errors, keepends, block)

"""``files``: the paths of many files -- a glob, a directory tree, or a list -- listed on a thread.

The listing runs on the source's own thread (see ``_reading``), a batch of paths at a
time, so walking a big tree never blocks the event loop, and it is never much ahead of
the consumer: the next batch is listed when the last one has been taken.

Which entries are files: regular files, and symbolic links to them; and dangling links,
whose target is gone, so that whatever reads them reports the missing file instead of it
being skipped without a word. Directories are walked into (links to directories are not
followed, whether walking a directory or matching a glob pattern, which also keeps a link
cycle from walking forever); special files (FIFOs, sockets, devices) are skipped, since
reading one may block forever.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ._files import StrPath, check_path
from ._reading import ThreadSource

BATCH = 256
"""Paths listed per call on the thread."""

_MAGIC = re.compile(r"[*?[]")


def _is_file(entry: os.DirEntry[str]) -> bool:
    if entry.is_file():  # (follows links)
        return True
    return entry.is_symlink() and not os.path.exists(entry.path)  # dangling


def _walk(root: str, recursive: bool) -> Iterator[Path]:
    """Depth first: each directory's entries sorted by name, a subdirectory in its place."""
    stack = [iter(_entries(root))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry.is_dir(follow_symlinks=False):
            if recursive:
                stack.append(iter(_entries(entry.path)))
        elif _is_file(entry):
            yield Path(entry.path)


def _entries(directory: str) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as entries:  # (read in full: no directory is left open)
        return sorted(entries, key=lambda entry: entry.name)


def _glob(pattern: str, recursive: bool) -> Iterator[Path]:
    """The files ``pattern`` matches, as :func:`glob.glob` finds them (``**`` spans
    directories when ``recursive``; ``*``, ``?`` and ``[...]`` do not match a leading dot
    unless the pattern's part starts with one), but never through a link to a directory:
    ``glob.glob`` follows them, so a link back up repeats paths (``a/up/a/up/...``) and
    two such links make the matching never end."""
    drive, rest = os.path.splitdrive(pattern)
    if rest.endswith((os.sep, os.altsep or os.sep)):
        return iter(())  # (it matches directories only: no file)
    parts = rest.split(os.sep) if os.altsep is None else re.split(r"[\\/]", rest)
    base = drive
    if parts and parts[0] == "":  # an absolute pattern: its root is the first directory
        base += os.sep
        parts = parts[1:]
    while len(parts) > 1 and not _MAGIC.search(parts[0]):  # literal directories
        base = os.path.join(base, parts[0]) if base else parts[0]
        parts = parts[1:]
    if base and not os.path.isdir(base):
        return iter(())
    # glob's order is the file system's; sorting the parts gives _walk's order. (A set:
    # "**/**" reaches a file by several paths, and glob.glob lists it once.)
    found = set(_matches(base, [part for part in parts if part], recursive))
    return iter(sorted(found, key=lambda path: path.parts))


def _matches(directory: str, parts: list[str], recursive: bool) -> Iterator[Path]:
    """The files below ``directory`` whose path from it matches ``parts``."""
    if not parts:
        return
    part, last = parts[0], len(parts) == 1
    if part == "**" and recursive:
        if not last:  # "**" as no directory at all
            yield from _matches(directory, parts[1:], recursive)
        for entry in _entries(directory or os.curdir):
            if entry.name.startswith("."):
                continue  # (glob's "**" does not enter hidden directories either)
            if last and _is_file(entry):
                yield Path(directory, entry.name)
            elif entry.is_dir(follow_symlinks=False):  # not into a link: no cycle
                yield from _matches(os.path.join(directory, entry.name), parts, recursive)
        return
    literal = not _MAGIC.search(part)
    if literal:  # (a name the pattern spells out: a link there is followed, as a base's is)
        entries = [entry for entry in _entries(directory or os.curdir) if entry.name == part]
    else:
        matcher = re.compile(fnmatch.translate(os.path.normcase(part)))
        hidden = part.startswith(".")
        entries = [
            entry
            for entry in _entries(directory or os.curdir)
            if (hidden or not entry.name.startswith("."))
            and matcher.match(os.path.normcase(entry.name))
        ]
    for entry in entries:
        if last:
            if _is_file(entry):
                yield Path(directory, entry.name)
        elif entry.is_dir(follow_symlinks=literal):
            yield from _matches(os.path.join(directory, entry.name), parts[1:], recursive)


def _each(paths: Iterable[Any], recursive: bool) -> Iterator[Path]:
    for item in paths:
        path = check_path("files", item)
        if path.is_dir():
            yield from _walk(str(path), recursive)
        elif path.exists() or path.is_symlink():
            yield path
        else:
            raise FileNotFoundError(f"files(): no such file or directory: {str(path)!r}")


class Files(ThreadSource[Path]):
    """The paths of many files, listed on a thread; made by :func:`files`."""

    _thread_name = "conveyor-files"

    def __init__(self, what: str, listing: Any) -> None:
        super().__init__()
        self.bytes_read = None  # a listing reads no file: no bytes, no speed, no progress
        self._description = what
        self._make_listing = listing  # called on the thread: even the first listing is there
        self._listing: Iterator[Path] | None = None
        self._error: Exception | None = None

    @property
    def _what(self) -> str:
        return f"the files of {self._description}"

    def _fetch(self) -> list[Path]:
        error, self._error = self._error, None
        if error is not None:
            raise error
        if self._listing is None:
            self._listing = self._make_listing()
        batch: list[Path] = []
        try:
            batch.extend(itertools.islice(self._listing, BATCH))
        except Exception as exc:
            if not batch:
                raise
            self._error = exc  # raised after the paths listed before it are handed out
        return batch

    def _release(self) -> None:
        self._listing = None  # (holds no open directory: see _entries)

    @property
    def files_read(self) -> int:
        """The paths yielded so far (``items_read``)."""
        return self.items_read

    def figures(self) -> dict[str, Any]:
        """The common reading figures (see ``_reading``; the ``bytes_*``, ``mb_per_second``
        and ``progress`` are None: no file is read), and ``files_read``: the paths yielded."""
        return {**super().figures(), "files_read": self.files_read}

    def __repr__(self) -> str:
        return f"<Files of {self._description}, {self.files_read} yielded>"


def files(paths_or_glob: StrPath | Iterable[StrPath], *, recursive: bool = True) -> Files:
    """The paths of many files, as :class:`pathlib.Path` objects, listed lazily on a thread.

    ``paths_or_glob`` is one of:

    - a **directory** (``str`` or ``Path``): every file below it; with
      ``recursive=False``, only the files directly in it;
    - a **glob pattern**, a ``str`` holding ``*``, ``?`` or ``[``: the files it matches
      (``"data/**/*.csv"``; ``**`` spans directories unless ``recursive=False``). A
      pattern that matches nothing yields nothing, as :func:`glob.glob` does; a
      ``Path`` is never taken as a pattern;
    - a **file**: that file;
    - an **iterable** of ``str`` / ``Path``: each one in turn, a directory as above
      (consumed on the source's thread, as it is listed).

    Order: each directory's entries sorted by name, depth first (a subdirectory's files
    come at the subdirectory's place), which is also the order of a glob's matches: the
    same tree always gives the same order. Paths start with the argument as given (a
    relative path stays relative). See the module's docstring for which entries are
    files.

    A directory is walked a batch of paths at a time, as the consumer takes them; a glob
    is matched in full, then handed out. ``figures()`` counts the paths yielded
    (``items_read``, and ``files_read``, the same) and the time spent listing; its
    ``bytes_*``, ``mb_per_second`` and ``progress`` are None.

    Raises at once: ``FileNotFoundError`` for a path (not a pattern) that does not
    exist, ``TypeError`` for an argument of another type. A path of an iterable that
    does not exist raises ``FileNotFoundError`` when it is reached.
    """
    if not isinstance(recursive, bool):
        raise TypeError(f"files(recursive=...) must be True or False, got {recursive!r}")
    if isinstance(paths_or_glob, str) and _MAGIC.search(paths_or_glob):
        pattern = paths_or_glob
        return Files(f"{pattern!r}", lambda: _glob(pattern, recursive))
    if isinstance(paths_or_glob, (str, os.PathLike)):
        path = check_path("files", paths_or_glob)
        if not path.exists() and not path.is_symlink():
            raise FileNotFoundError(
                f"files(paths_or_glob): no such file or directory: {str(path)!r} (relative "
                f"paths start in the current directory, {os.getcwd()!r}); check the path, "
                "or pass a glob pattern such as 'data/**/*.csv', which may match nothing"
            )
        return Files(f"{str(path)!r}", lambda: _each([path], recursive))
    if isinstance(paths_or_glob, bytes) or not isinstance(paths_or_glob, Iterable):
        raise TypeError(
            "files(paths_or_glob) takes a directory, a file, a glob pattern (str) or an "
            f"iterable of paths, got {type(paths_or_glob).__name__}: {paths_or_glob!r}"
        )
    paths = paths_or_glob
    return Files("a list of paths", lambda: _each(paths, recursive))

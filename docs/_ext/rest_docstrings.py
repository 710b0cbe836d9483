"""A Griffe extension for the API reference: conveyor's reST-flavoured docstrings as Markdown.

The docstrings are plain prose with a little reST, which mkdocstrings would show as is:

- roles, ``:class:`~conveyor.errors.Failure``` -> ``Failure`` as code; a public
  ``conveyor.`` target (no ``._`` in it) becomes a link to its entry in the reference;
- definition lists (a term line, then its definition indented by four spaces) -> the
  ``def_list`` syntax of Markdown (``:   definition``);
- a paragraph ending in ``::`` before a literal block -> ending in ``:``.

mkdocs.yml loads it (mkdocstrings' ``extensions`` option); only the rendering changes,
never the docstrings in the source.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?[a-z]+:`(?P<tilde>~?)(?P<target>[^`<>]+)`")


def _role(match: re.Match[str]) -> str:
    target = match["target"].strip()
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    if target.startswith("conveyor") and "._" not in target and not target.startswith("."):
        return f"[`{shown}`][{target}]"
    return f"`{shown}`"


def _definition_lists(lines: list[str]) -> list[str]:
    indented = re.compile(r"    \S")
    out: list[str] = []
    after = "blank"  # what the previous line was: blank, definition or text
    i = 0
    while i < len(lines):
        line = lines[i]
        # A term: one or more unindented lines (joined into one), then an indented line.
        j = i
        while j < len(lines) and lines[j].strip() and not lines[j][0].isspace():
            j += 1
        if after in ("blank", "definition") and i < j < len(lines) and indented.match(lines[j]):
            if after == "definition":
                out.append("")  # Markdown needs it to see the next term as a term
            out.append(" ".join(term.strip() for term in lines[i:j]))
            out.append(":   " + lines[j][4:])
            i = j + 1
            while i < len(lines) and indented.match(lines[i]):
                out.append(lines[i])
                i += 1
            after = "definition"
            continue
        out.append(line)
        after = "blank" if not line.strip() else "text"
        i += 1
    return out


def to_markdown(text: str) -> str:
    """The Markdown rendering of one docstring."""
    text = ROLE.sub(_role, text)
    text = re.sub(r"(?<=\S)::$", ":", text, flags=re.MULTILINE)
    return "\n".join(_definition_lists(text.splitlines()))


class RestDocstrings(griffe.Extension):
    """Rewrite each loaded object's docstring with :func:`to_markdown`, once."""

    def __init__(self) -> None:
        super().__init__()
        self._done: set[int] = set()

    def _rewrite(self, obj: griffe.Object) -> None:
        if obj.docstring is not None and id(obj.docstring) not in self._done:
            self._done.add(id(obj.docstring))
            obj.docstring.value = to_markdown(obj.docstring.value)

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        self._rewrite(obj)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._rewrite(pkg)  # a package is not passed to on_object

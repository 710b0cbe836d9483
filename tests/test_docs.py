"""Every ```python block of README.md and docs/*.md runs, as a whole, on its own.

Each block is executed with ``exec`` in a fresh namespace (``__name__ == "__main__"``),
in a plain synchronous test, so blocks run their coroutines with ``conveyor.run(main())``
exactly as a reader would. A block opts out only with a ``<!-- no-test -->`` line right
before its opening fence.

A line ``--8<-- "path"`` inside a block is a pymdownx.snippets include: the site shows
the file there (docs/examples.md lists every example this way), so the test runs the
block with the file's text in its place, resolving the path as mkdocs.yml does (from the
repository's root, then from docs/; ``"path:START:END"`` takes those lines).

The pages are checked for a few more things a reader relies on: relative links point to
files that exist, every include names a file that exists, every example is on the
examples page, and the README's two commands are the ones CI runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NO_TEST = "<!-- no-test -->"
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
# A pymdownx.snippets include, as mkdocs.yml configures it (base_path: ".", "docs").
SNIPPET = re.compile(r"""^\s*-{1,}8<-{1,}\s+(?P<quote>["'])(?P<target>[^"']+)(?P=quote)\s*$""")
SNIPPET_BASES = [ROOT, ROOT / "docs"]


def snippet_path(target: str) -> tuple[Path | None, slice]:
    """The file a snippet target names (None if there is none) and the lines it takes."""
    name, lines = target, slice(None)
    if match := re.fullmatch(r"(?P<name>.+?):(?P<start>\d*):?(?P<end>\d*)", target):
        start, end = match["start"], match["end"]
        name = match["name"]
        lines = slice(int(start) - 1 if start else None, int(end) if end else None)
    found = next((base / name for base in SNIPPET_BASES if (base / name).is_file()), None)
    return found, lines


def expand_snippets(code: str, where: str) -> str:
    """``code`` with each ``--8<-- "path"`` line replaced by the text it includes."""
    out = []
    for line in code.splitlines():
        match = SNIPPET.match(line)
        if match is None:
            out.append(line)
            continue
        path, lines = snippet_path(match["target"])
        if path is None:
            raise AssertionError(f"{where}: included file {match['target']!r} not found")
        out.extend(path.read_text(encoding="utf-8").splitlines()[lines])
    return "\n".join(out)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skipped: bool

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}:{self.line}"


def extract_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a markdown page, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening["fence"]
        language = opening["info"].split()[0].lower() if opening["info"] else ""
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if (
                closing
                and not closing["info"]
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
            ):
                break
            body.append(lines[j])
            j += 1
        else:
            raise AssertionError(f"{page}:{i + 1}: code block is never closed")
        indent = len(opening["indent"])
        code = "\n".join(line[indent:] if line[:indent].isspace() else line for line in body)
        code = expand_snippets(code, f"{page}:{i + 1}")
        blocks.append(Block(page, i + 1, language, code + "\n", previous == NO_TEST))
        i = j + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in extract_blocks(page)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language in ("python", "py")]


def test_pages_exist() -> None:
    names = {page.name for page in PAGES}
    expected = {
        "README.md",
        "index.md",
        "getting-started.md",
        "execution-modes.md",
        "batching.md",
        "error-handling.md",
        "inputs-and-cancellation.md",
        "context-and-side-inputs.md",
        "migration.md",
        "api.md",
    }
    assert expected <= names, f"missing pages: {sorted(expected - names)}"
    assert len(PYTHON_BLOCKS) >= 20, "suspiciously few python blocks were found"


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(block, id=block.id, marks=pytest.mark.skip(NO_TEST) if block.skipped else ())
        for block in PYTHON_BLOCKS
    ],
)
def test_python_block(block: Block) -> None:
    if "async def main" in block.code:
        assert "run(main())" in block.code, f"{block.id}: defines main() but never runs it"
    assert not re.search(r"^await\b", block.code, re.MULTILINE), (
        f"{block.id}: top-level await; wrap the code in `async def main()` and "
        "call `conveyor.run(main())`"
    )
    code = compile(block.code, block.id, "exec")
    namespace = {"__name__": "__main__", "__file__": str(block.page)}
    exec(code, namespace)


def test_readme_commands() -> None:
    """The two commands near the top of the README, verbatim (CI runs the second)."""
    head = (ROOT / "README.md").read_text(encoding="utf-8")[:1500]
    assert "pip install -e . && python examples/quickstart.py" in head
    assert "pip install nox && nox -s tests" in head


def test_included_files_exist() -> None:
    """Every include of the pages, in code blocks or not, names a file (the site needs it)."""
    missing = [
        f"{page.relative_to(ROOT)}: {match['target']}"
        for page in PAGES
        for line in page.read_text(encoding="utf-8").splitlines()
        if (match := SNIPPET.match(line)) and snippet_path(match["target"])[0] is None
    ]
    assert not missing, f"included files not found: {missing}"


def test_every_example_is_on_the_examples_page() -> None:
    text = (ROOT / "docs" / "examples.md").read_text(encoding="utf-8")
    examples = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
    missing = [name for name in examples if f'--8<-- "examples/{name}"' not in text]
    assert not missing, f"docs/examples.md does not include {missing}"


LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    # Links inside code blocks are code, not links.
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    broken = []
    for match in LINK.finditer(text):
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # external link or anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"

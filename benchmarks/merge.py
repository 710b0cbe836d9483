"""``python -m benchmarks.merge RESULTS... --output PATH``: one results file, one table per run.

Each input is a file written by ``python -m benchmarks --output ...`` (one interpreter's
run, e.g. ``benchmarks/results-3.11.md`` and ``benchmarks/results-3.14.md``); the output
holds their sections in the order given, then the notes once. Standard library only: it
runs under any interpreter, without the benchmark dependencies.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .report import document, sections_of, write_markdown

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "RESULTS.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.merge", description=__doc__)
    parser.add_argument("inputs", nargs="+", type=Path, help="results files, one per run")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"markdown file ({DEFAULT_OUTPUT})"
    )
    args = parser.parse_args(argv)
    sections: list[str] = []
    for path in args.inputs:
        try:
            sections += sections_of(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            parser.error(f"{path}: {exc}")
    write_markdown(args.output, document(sections))
    print(f"{len(sections)} run(s) from {len(args.inputs)} file(s) written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Mermaid pictures: ``pipeline.to_mermaid()`` and ``stream.stats.to_mermaid()``.

No Mermaid parser runs here; :func:`check_chart` checks the structure the charts rely
on instead: every line is a node, an edge or the bottleneck's class; every node id is
defined once; edges and classes name defined nodes; labels hold no raw quote.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_docs import extract_blocks

from conveyor import ErrorHandler, Pipeline, batch_task, single_task
from conveyor._mermaid import escape
from conveyor.stats import Latency, RunStats, StageStats

NODE = re.compile(r'^    (\w+)(\(\[|\[\[|\[)"([^"]*)"(\]\)|\]\]|\])$')
EDGE = re.compile(r'^    (\w+) -->(?:\|"([^"]*)"\|)? (\w+)$')
CLASS = re.compile(r"^    class (\w+) bottleneck$")
CLASSDEF = "    classDef bottleneck stroke:#d33,stroke-width:3px"
SHAPES = {"([": "])", "[[": "]]", "[": "]"}


def check_chart(text: str) -> dict[str, list[str]]:
    """Check ``text``'s structure; return each node's label lines, unescaped."""
    lines = text.splitlines()
    assert text.endswith("\n") and lines[0] == "flowchart LR"
    labels: dict[str, list[str]] = {}
    for line in lines[1:]:
        if node := NODE.match(line):
            node_id, opening, label, closing = node.groups()
            assert node_id not in labels, f"{node_id} defined twice"
            assert SHAPES[opening] == closing, line
            labels[node_id] = [unescape(part) for part in label.split("<br/>")]
        elif edge := EDGE.match(line):
            assert {edge[1], edge[3]} <= set(labels), f"edge to an undefined node: {line}"
        elif mark := CLASS.match(line):
            assert mark[1] in labels and CLASSDEF in lines, line
        else:
            assert line == CLASSDEF, f"not a node, edge or class: {line!r}"
    return labels


def unescape(label: str) -> str:
    """A label as Mermaid shows it: ``#name;`` and ``#123;`` are HTML entities."""
    assert "<" not in label and ">" not in label and '"' not in label
    entities = re.sub(r"#(\w+);", lambda m: f"&#{m[1]};" if m[1].isdigit() else f"&{m[1]};", label)
    return html.unescape(entities)


def edges(text: str) -> list[tuple[str, str]]:
    return [(m[1], m[3]) for line in text.splitlines() if (m := EDGE.match(line))]


class Alert(ErrorHandler):
    async def handle_error(self, exc: Exception, item: object, task_name: str) -> bool:
        return False


@single_task(concurrency_limit=8, on_error="skip_item", retry_attempts=3, timeout=2)
async def fetch(x: int) -> int:
    return x


@batch_task(min_size=2, max_size=32, max_wait=0.05, on_error="emit")
async def rerank(batch: list[int]) -> list[int]:
    return batch


@batch_task(max_size=4)
async def pack(batch: list[int]) -> list[int]:
    return batch


@single_task(executor="thread", error_handler=Alert())
def enrich(x: int) -> int:
    return x


def test_a_pipeline_chart_exactly() -> None:
    pipeline = (fetch | rerank | pack | enrich).with_context(max_in_flight=64)
    assert pipeline.to_mermaid() == (
        "flowchart LR\n"
        '    input(["input"])\n'
        '    s0["fetch<br/>single<br/>concurrency 8<br/>on_error skip_item, retry_attempts 3'
        '<br/>timeout 2 s"]\n'
        '    s1[["rerank<br/>batch 2\N{EN DASH}32, max_wait 0.05 s<br/>on_error emit"]]\n'
        '    s2[["pack<br/>batch 1\N{EN DASH}4"]]\n'
        '    s3["enrich<br/>single<br/>executor thread<br/>error_handler Alert"]\n'
        '    output(["output<br/>ordered<br/>max_in_flight 64"])\n'
        "    input --> s0\n"
        "    s0 --> s1\n"
        "    s1 --> s2\n"
        "    s2 --> s3\n"
        "    s3 --> output\n"
    )
    check_chart(pipeline.to_mermaid())


def test_a_task_alone_and_the_mode_and_parallelism() -> None:
    assert enrich.to_mermaid() == Pipeline([enrich]).to_mermaid()
    chart = check_chart(
        enrich.with_execution_mode("as_completed")
        .with_context(max_parallelism=4, max_in_flight=10)
        .to_mermaid()
    )
    assert list(chart) == ["input", "s0", "output"]
    assert chart["output"] == ["output", "as completed", "max_in_flight 10", "max_parallelism 4"]
    assert check_chart(pack.to_mermaid())["s0"] == ["pack", "batch 1\N{EN DASH}4"]
    fours = batch_task(min_size=4)(pack.func)  # max_size defaults to min_size
    assert check_chart(fours.to_mermaid())["s0"] == ["pack", "batch 4"]


def test_labels_are_escaped() -> None:
    nasty = 'a "b" <i>c</i> | [d] {e} (f) #g; &amp; `h` style:x#y;\nend'

    @single_task(task_name=nasty, executor="process:2", chunk_size=5)
    def odd(x: int) -> int:
        return x

    text = odd.to_mermaid()
    labels = check_chart(text)
    assert labels["s0"] == [nasty.replace("\n", " "), "single", "executor process:2, chunk_size 5"]
    assert "#34;b#34; #60;i#62;c#60;/i#62; | [d]" in text
    assert escape("style:a#b") == "style#58;a#35;b"  # no raw ":" for Mermaid's style regex


@pytest.mark.looptime
async def test_a_stats_chart_marks_the_stage_at_its_limit() -> None:
    @single_task(concurrency_limit=2)
    async def slow(x: int) -> int:
        await asyncio.sleep(0.5)
        return x

    @single_task
    async def quick(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    @single_task(on_error="skip_item")
    def picky(x: int) -> int:
        if x % 10 == 3:
            raise ValueError(x)
        return x

    stream = (quick | slow | quick | picky)(range(1000))
    await stream.collect()
    text = stream.stats.to_mermaid()
    labels = check_chart(text)
    assert "    class s1 bottleneck\n" in text and text.count("class ") == 1
    assert labels["s1"][-1] == "bottleneck" and "bottleneck" not in labels["s2"]
    assert labels["s1"][:3] == ["slow", "single", "concurrency 2"]
    assert "p50 500.0 ms, p95 500.0 ms" in labels["s1"] and "busy 100%" in labels["s1"]
    assert labels["s3"][-1] == "100 skipped"
    assert text.count('-->|"1,000 items"|') == 4 and '-->|"900 items"| output' in text
    assert labels["output"][1].startswith("900 results in 250.")


@pytest.mark.looptime
async def test_a_stats_chart_marks_the_consumer_or_the_input() -> None:
    @single_task
    async def quick(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    stream = quick(range(50))
    async with stream:
        async for _ in stream:
            await asyncio.sleep(0.2)  # the reader is the slow part
    assert "    class output bottleneck\n" in stream.stats.to_mermaid()
    assert check_chart(stream.stats.to_mermaid())["output"][-1] == "bottleneck"

    async def trickle() -> AsyncIterator[int]:
        for i in range(20):
            await asyncio.sleep(0.3)
            yield i

    stream = quick(trickle())
    await stream.collect()
    assert "    class input bottleneck\n" in stream.stats.to_mermaid()


async def test_a_short_run_a_batch_stage_and_no_run_yet() -> None:
    stream = pack(range(10))
    assert check_chart(stream.stats.to_mermaid()) == {
        "input": ["input"],
        "output": ["output", "0 results in 0.00 s", "running"],
    }
    await stream.collect()
    text = stream.stats.to_mermaid()
    assert "bottleneck" not in text  # under 5 samples: no bottleneck named
    labels = check_chart(text)
    assert labels["s0"][:2] == ["pack", "batch (3 batches, mean size 3.3)"]
    assert '    s0[["pack<br/>' in text and '    s0 -->|"10 items"| output\n' in text


async def test_statistics_off() -> None:
    stream = enrich.with_context(statistics=False)(range(3))
    await stream.collect()
    text = stream.stats.to_mermaid()
    assert text == (
        'flowchart LR\n    off["statistics are off for this run<br/>'
        'PipelineContext(statistics=False)"]\n'
    )
    assert RunStats(enabled=False).to_mermaid() == text


# -- the docs page shows what the code prints ---------------------------------------------

PAGE = Path(__file__).resolve().parent.parent / "docs" / "pictures.md"


def test_the_docs_pictures_are_what_the_code_prints() -> None:
    blocks = extract_blocks(PAGE)
    code = [b for b in blocks if b.language == "python"]
    pictures = [b.code for b in blocks if b.language == "mermaid"]
    assert len(code) == 1 and len(pictures) == 2
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code[0].code, code[0].id, "exec"), {"__name__": "__main__"})
    pipeline_chart, stats_chart = printed.getvalue().split("\n\n")[:2]
    assert pictures[0] == pipeline_chart + "\n"
    # The run's figures vary; its nodes, shapes and edges do not.
    shown, run = check_chart(pictures[1]), check_chart(stats_chart + "\n")
    assert [(k, v[0]) for k, v in shown.items()] == [(k, v[0]) for k, v in run.items()]
    assert edges(pictures[1]) == edges(stats_chart)
    assert "class s1 bottleneck" in pictures[1] and "class s1 bottleneck" in stats_chart


def test_a_repeated_name_marks_the_stage_the_bottleneck_measured() -> None:
    def stage(name: str, busy: float) -> StageStats:
        return StageStats(
            name, False, "inline", None, 10, 10, 0, 0, 0, 0, 0, 0, 0, Latency(), 0.0,
            busy, 0.0, None, None, None,
        )  # fmt: skip

    stats = RunStats(
        samples=10, stages=(stage("quick", 0.2), stage("slow", 0.3), stage("quick", 0.4))
    )
    assert stats.bottleneck is not None and stats.bottleneck.where == "quick"
    assert stats.to_mermaid().endswith("    class s2 bottleneck\n")

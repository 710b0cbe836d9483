"""The text of Mermaid flowcharts: a pipeline's stages and options, or a run's figures.

Both charts are one chain, left to right: an ``input`` node, a node ``s0``, ``s1``, ...
per stage in pipeline order, an ``output`` node, and an edge from each node to the next.
Single-task stages are rectangles, batch stages Mermaid's subroutine shape (``[[...]]``),
input and output stadiums (``([...])``). Every label is a quoted Mermaid string whose
lines are joined with ``<br/>``; text that Mermaid would read as markup is written as
Mermaid entity codes (see :func:`escape`).

It only writes text: a pipeline's chart from stage specs and a context here, and the
parts a run's chart (``conveyor.stats``) is made of.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._engine._registry import display_name

if TYPE_CHECKING:
    from ._spec import StageSpec
    from .context import PipelineContext

__all__ = [
    "STAGE_SHAPE",
    "STATISTICS_OFF",
    "chain",
    "count_label",
    "escape",
    "flowchart",
    "pipeline_chart",
    "run_chart",
    "seconds",
]

BOTTLENECK_STYLE = "stroke:#d33,stroke-width:3px"

# Mermaid decodes "#name;" and "#123;" in labels as HTML entities, so "#" itself must be
# written as one; '"' would end the label; "<", ">" and "&" would be HTML; "`" right after
# the opening quote would make a Markdown label. ":" is written as one too: Mermaid drops
# the last ";" of any line matching "style.*:\S*#.*;" before it decodes entities (a task
# named "style:a#b" would show "#35" otherwise).
_ENTITIES = {char: f"#{ord(char)};" for char in '#"<>&`:'}

_SHAPES = {"box": ("[", "]"), "subroutine": ("[[", "]]"), "stadium": ("([", "])")}
STATISTICS_OFF = "PipelineContext(statistics=False)"
STAGE_SHAPE = {False: "box", True: "subroutine"}  # by StageSpec.batch


def escape(text: str) -> str:
    """``text`` written to stand in a quoted label and show as itself (on one line)."""
    return "".join(
        _ENTITIES.get(char, " " if char.isspace() or not char.isprintable() else char)
        for char in text
    )


def chain(
    nodes: Sequence[tuple[str, str, Sequence[str]]],
    edge_labels: Sequence[str | None] = (),
    marked: str | None = None,
) -> str:
    """A ``flowchart LR`` of ``nodes`` joined in order, each to the next.

    Each node is ``(id, shape, lines)``: ``shape`` is ``"box"``, ``"subroutine"`` or
    ``"stadium"``; ``lines`` are escaped here and joined with ``<br/>``. ``edge_labels[i]``
    (when given and not ``None``) labels the edge leaving node ``i``. The node whose id is
    ``marked`` gets a last line ``bottleneck`` and the ``bottleneck`` class (a red border).
    """
    edges = [
        (nodes[i][0], nodes[i + 1][0], edge_labels[i] if i < len(edge_labels) else None)
        for i in range(len(nodes) - 1)
    ]
    return flowchart(nodes, edges, marked)


def flowchart(
    nodes: Sequence[tuple[str, str, Sequence[str]]],
    edges: Sequence[tuple[str, str, str | None]],
    marked: str | None = None,
) -> str:
    """A ``flowchart LR`` of ``nodes`` (as :func:`chain`'s) and ``edges`` ``(from, to,
    label or None)``, in order."""
    out = ["flowchart LR"]
    for node_id, shape, lines in nodes:
        opening, closing = _SHAPES[shape]
        marks = ["bottleneck"] if node_id == marked else []
        label = "<br/>".join(escape(line) for line in [*lines, *marks])
        out.append(f'    {node_id}{opening}"{label}"{closing}')
    for start, end, text in edges:
        arrow = "-->" if text is None else f'-->|"{escape(text)}"|'
        out.append(f"    {start} {arrow} {end}")
    if marked is not None:
        out.append(f"    classDef bottleneck {BOTTLENECK_STYLE}")
        out.append(f"    class {marked} bottleneck")
    return "\n".join(out) + "\n"


Node = tuple[str, str, Sequence[str]]
Edge = tuple[str, str, str | None]


def _line(
    specs: Sequence[StageSpec], prefix: str, nodes: list[Node], edges: list[Edge]
) -> tuple[str, str]:
    """The nodes and edges of a line of stages (a branch's own, under it): its first and
    last node. A branch stage (``parallel``, ``route``) is its node, where items fork,
    each branch's line, and a join node ``<id>j`` where their results meet."""
    ends: list[tuple[str, str]] = []
    for i, spec in enumerate(specs):
        node = f"{prefix}{i}"
        nodes.append((node, STAGE_SHAPE[spec.batch], option_lines(spec)))
        last = node
        shape = spec.branches
        if shape is not None:
            last = f"{node}j"
            for number, (_, line) in enumerate(shape.branches):
                first, end = _line(line, f"{node}b{number}s", nodes, edges)
                edges.append((node, first, _route_label(shape, number)))
                edges.append((end, last, None))
            if shape.kind == "route" and shape.default is None:
                edges.append((node, last, "other: unchanged"))
            nodes.append((last, "stadium", ["join" if shape.kind == "parallel" else "merge"]))
        if ends:
            edges.append((ends[-1][1], node, None))
        ends.append((node, last))
    return ends[0][0], ends[-1][1]


def _route_label(shape: Any, number: int) -> str | None:
    """The edge into branch ``number`` of a route: the values of its key that go there."""
    if shape.kind != "route":
        return None
    if number == shape.default:
        return "other"
    return "key " + ", ".join(repr(value) for value, index in shape.routes if index == number)


# -- a pipeline's stages and options ------------------------------------------------------


def pipeline_chart(specs: Sequence[StageSpec], context: PipelineContext) -> str:
    """The chart of ``Pipeline.to_mermaid`` (its docstring says what the labels hold)."""
    mode = "ordered" if context.execution_mode == "ordered" else "as completed"
    output = ["output", mode, f"max_in_flight {context.max_in_flight}"]
    if context.max_parallelism is not None:
        output.append(f"max_parallelism {context.max_parallelism}")
    nodes: list[Node] = [("input", "stadium", ["input"])]
    edges: list[Edge] = []
    if specs:
        first, last = _line(specs, "s", nodes, edges)
        edges[:0] = [("input", first, None)]
    else:
        last = "input"
    nodes.append(("output", "stadium", output))
    edges.append((last, "output", None))
    return flowchart(nodes, edges)


def option_lines(spec: StageSpec) -> list[str]:
    """A stage's label: its name, its kind, then only the options not at their default."""
    o = spec.options
    if spec.batch:
        sizes = f"{o.min_size}\N{EN DASH}{o.max_size}" if o.min_size != o.max_size else o.max_size
        kind = f"batch {sizes}" + ("" if o.key is None else " by key")
        kind += "" if o.max_wait is None else f", max_wait {o.max_wait:g} s"
    else:
        kind = "single" if spec.branches is None else spec.branches.kind
    lines = [spec.name, kind]
    if o.concurrency_limit is not None:
        lines.append(f"concurrency {o.concurrency_limit}")
    if o.rate_limit is not None:
        lines.append(f"rate limit {o.rate_limit.describe()}")
    if o.concurrency_limit_per_key is not None:
        lines.append(f"{o.concurrency_limit_per_key[1]} at once per key")
    if o.priority is not None:
        lines.append("by priority")
    executor = executor_name(o.executor)
    if executor is not None:
        chunks = "" if o.chunk_size is None else f", chunk_size {o.chunk_size}"
        lines.append(f"executor {executor}{chunks}")
    errors = [] if o.on_error == "fail" else [f"on_error {o.on_error.value}"]
    if o.retry_attempts > 1:
        errors.append(f"retry_attempts {o.retry_attempts}")
    if o.error_handler is not None:
        errors.append(f"error_handler {type(o.error_handler).__name__}")
    if errors:
        lines.append(", ".join(errors))
    if o.timeout is not None:
        lines.append(f"timeout {o.timeout:g} s")
    return lines


def executor_name(executor: Any) -> str | None:
    """A short name for a task's ``executor`` option; ``None`` for the default (inline)."""
    return display_name(executor)  # (the kind's: see _engine._registry)


def count_label(count: int, noun: str) -> str:
    """``count`` things, with the noun's plural when it is not 1: ``1 item``, ``2 batches``."""
    return f"{count:,} {noun if count == 1 else noun + ('es' if noun == 'batch' else 's')}"


def seconds(value: float) -> str:
    """``value`` seconds, with a unit that keeps it short: µs, ms or s."""
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


# -- the chart of a run's figures (RunStats.to_mermaid) -----------------------------------


def run_chart(stats: Any) -> str:
    """The chart of ``RunStats.to_mermaid`` (its docstring says what the labels hold).

    (``stats`` is a :class:`conveyor.stats.RunStats`, its stages ``StageStats``: typed
    ``Any`` here since ``conveyor.stats`` imports this module.)"""
    if not stats.enabled:
        return chain([("off", "box", ["statistics are off for this run", STATISTICS_OFF])])
    source = ["input"]
    if stats.input_held_back_seconds > 0:
        source.append(f"held back {seconds(stats.input_held_back_seconds)}")
    if stats.done_earlier:
        source.append(f"{stats.done_earlier:,} done earlier, skipped")
    rate = "" if stats.items_per_second is None else f", {stats.items_per_second:,.0f}/s"
    output = [
        "output",
        f"{count_label(stats.results, 'result')} in {stats.elapsed:.2f} s{rate}",
    ]
    output += [] if stats.finished else ["running"]
    stages = stats.stages
    if all(s.branch_of is None for s in stages):  # (a line: its edges are its counts)
        nodes = [
            ("input", "stadium", source),
            *((f"s{i}", STAGE_SHAPE[s.batch], _figure_lines(s)) for i, s in enumerate(stages)),
            ("output", "stadium", output),
        ]
        # Edges: into the first stage, then out of each (out = what the next one got).
        counts = [s.items_in for s in stages[:1]] + [s.items_out for s in stages]
        labels = [count_label(n, "item") for n in counts or [stats.results]]
        return chain(nodes, labels, _bottleneck_node(stats))
    return _branched_chart(stats, source, output)


def _branched_chart(stats: Any, source: list[str], output: list[str]) -> str:
    """A run's chart with branch stages (``parallel``, ``route``): each forks into its
    branches' stages, which meet at its join node (as ``pipeline_chart`` draws them)."""
    stages = stats.stages
    nodes: list[Node] = [("input", "stadium", source)]
    edges: list[Edge] = []

    def line(indices: list[int]) -> tuple[str, str]:
        previous: str | None = None
        first = ""
        for i in indices:
            s = stages[i]
            node = last = f"s{i}"
            nodes.append((node, STAGE_SHAPE[s.batch], _figure_lines(s)))
            branches: dict[int, list[int]] = {}
            for j, other in enumerate(stages):
                if other.branch_of == i:
                    branches.setdefault(other.branch, []).append(j)
            if branches:
                last = f"{node}j"
                for members in branches.values():
                    start, end = line(members)
                    edges.append((node, start, count_label(stages[members[0]].items_in, "item")))
                    edges.append((end, last, count_label(stages[members[-1]].items_out, "item")))
                # (a route's items of no branch, passed on unchanged)
                passed = s.items_in - sum(stages[m[0]].items_in for m in branches.values())
                if passed > 0:
                    edges.append((node, last, count_label(passed, "item") + " unchanged"))
                nodes.append((last, "stadium", ["join"]))
            if previous is None:
                first = node
            else:
                edges.append((previous, node, count_label(s.items_in, "item")))
            previous = last
        return first, previous or first

    start, end = line([i for i, s in enumerate(stages) if s.branch_of is None])
    edges[:0] = [("input", start, count_label(stages[0].items_in, "item"))]
    nodes.append(("output", "stadium", output))
    edges.append((end, "output", count_label(stats.results, "result")))
    return flowchart(nodes, edges, _bottleneck_node(stats))


def _figure_lines(s: Any) -> list[str]:
    """A stage's label in a run: name, kind, executor and limit, then its figures."""
    kind = "batch" if s.batch else "single"
    if s.batches and s.mean_batch_size is not None:
        kind += f" ({count_label(s.batches, 'batch')}, mean size {s.mean_batch_size:.1f})"
    lines = [s.name, kind]
    if s.executor != "inline":
        lines.append(f"executor {s.executor}")
    if s.limit is not None:
        lines.append(f"concurrency {'auto, now ' if s.concurrency_limit_now else ''}{s.limit}")
    if s.rate_limit is not None:
        lines.append(f"rate limit {s.rate_limit}")
    if s.latency.p50 is not None and s.latency.p95 is not None:
        lines.append(f"p50 {seconds(s.latency.p50)}, p95 {seconds(s.latency.p95)}")
    if s.busy_share is not None:
        lines.append(f"busy {s.busy_share:.0%}")
    if s.loop_share is not None and s.loop_share >= 0.05:
        lines.append(f"on the event loop {s.loop_share:.0%}")
    counts = ((s.failed, "failed"), (s.skipped, "skipped"), (s.emitted, "emitted"))
    trouble = [f"{n:,} {what}" for n, what in (*counts, (s.retried, "retried")) if n]
    if trouble:
        lines.append(", ".join(trouble))
    return lines


def _bottleneck_node(stats: Any) -> str | None:
    neck = stats.bottleneck
    if neck is None:
        return None
    # A name can repeat (quick | slow | quick): the stage whose share is the one named.
    named = [i for i, s in enumerate(stats.stages) if s.name == neck.where]
    for i in named:
        stage = stats.stages[i]
        if neck.share in (
            stage.at_limit_share,
            stage.busy_share,
            stage.loop_share,
            stage.window_capped_share,
        ):
            return f"s{i}"
    if neck.where in ("input", "consumer"):
        return {"input": "input", "consumer": "output"}[neck.where]
    return f"s{named[0]}" if named else None

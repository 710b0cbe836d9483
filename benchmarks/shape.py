"""``python -m benchmarks.shape``: the engine modules one item crosses, input to consumer.

Runs ``async def -> def (concurrency_limit=4) -> def`` on one item, statistics on, with a
profile hook that records each call from one module of ``conveyor`` into another; prints
the modules in the order the item meets them, the calls that cross modules, and the pairs
of modules that call each other both ways (the issue "Engine v3" asks for one
direction). Only the
item's own path counts: the run's set-up (building, binding) and its end are left out by
starting the trace at the pump's first admission and stopping it at the consumer's take.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

from conveyor import single_task


@single_task
async def fetch(x: int) -> int:
    await asyncio.sleep(0)
    return x


@single_task(concurrency_limit=4)
def parse(x: int) -> int:
    return x + 1


@single_task
def enrich(x: int) -> int:
    return x * 2


def trace(calls: list[tuple[str, str]]) -> Any:
    def hook(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            name = frame.f_globals.get("__name__", "")
            caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
            if name.startswith("conveyor") and name != __name__ and caller != name:
                calls.append((caller, name))

    return hook


def items() -> Iterator[int]:
    sys.setprofile(trace(CALLS))  # (from the pump's first read of the input)
    yield 1


CALLS: list[tuple[str, str]] = []


async def main() -> None:
    stream = (fetch | parse | enrich)(items())
    async for _ in stream:
        sys.setprofile(None)  # (the consumer has the result)
        break
    await stream.aclose()
    met = list(dict.fromkeys(callee for _, callee in CALLS))
    engine = [name for name in met if name.startswith("conveyor._engine")]
    edges = dict.fromkeys(CALLS)
    both = sorted({tuple(sorted(edge)) for edge in edges if edge[::-1] in edges})
    print(f"modules, in the order the item meets them: {', '.join(met)}")
    print(f"engine modules: {len(engine)}; calls across modules: {len(CALLS)}")
    print(f"pairs of modules calling each other both ways: {len(both)}")
    for a, b in both:
        print(f"  {a} <-> {b}")


if __name__ == "__main__":
    asyncio.run(main())

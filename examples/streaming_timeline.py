"""When do results arrive? Ordered vs as-completed, on a timeline.

Eight items take 0.01, 0.02, 0.03, 0.04, 0.05, 0.20, 0.07 and 0.08 s to process (a
10x scaled-down version of 0.1 .. 0.8 s with a 2 s straggler at position 6).

* Ordered (the default): results 1-5 arrive as soon as each is done, long before the
  straggler; 6 arrives when it is done, and 7 and 8 (finished meanwhile, held back to
  keep the order) arrive right after it, together.
* As completed: every result arrives the moment it is done: 1 2 3 4 5 7 8 6.
"""

import asyncio
import time

import conveyor
from conveyor import single_task

DELAYS = [0.01, 0.02, 0.03, 0.04, 0.05, 0.20, 0.07, 0.08]
finished_at: dict[int, float] = {}  # item -> when its processing ended
start = 0.0


@single_task
async def process(item: int) -> int:
    await asyncio.sleep(DELAYS[item - 1])
    finished_at[item] = time.perf_counter() - start
    return item


async def timeline(stream: conveyor.AsyncStream[int], title: str) -> list[tuple[int, float]]:
    global start
    finished_at.clear()
    start = time.perf_counter()
    arrivals = []
    print(title)
    async for item in stream:
        at = time.perf_counter() - start
        arrivals.append((item, at))
        print(f"  {at:5.3f}s  result {item}")
    return arrivals


async def main() -> None:
    items = range(1, 9)

    ordered = await timeline(process(items), "ordered (default):")
    assert [item for item, _ in ordered] == [1, 2, 3, 4, 5, 6, 7, 8]
    straggler_done = finished_at[6]
    # Results 1-5 were delivered while item 6 was still being processed ...
    assert all(at < straggler_done for item, at in ordered if item <= 5), ordered
    # ... and 6, 7, 8 only once it was done (7 and 8 had finished long before).
    assert all(at >= straggler_done for item, at in ordered if item >= 6), ordered
    assert finished_at[7] < straggler_done and finished_at[8] < straggler_done

    completed = await timeline(process.as_completed(items), "as completed:")
    assert [item for item, _ in completed] == [1, 2, 3, 4, 5, 7, 8, 6], completed
    straggler_done = finished_at[6]
    assert all(at < straggler_done for item, at in completed if item != 6), completed


if __name__ == "__main__":
    conveyor.run(main())

"""Quick start: three stages, one of them a batch, streamed end to end.

    double | sum_batch(max_size=3) | add_ten   over 1..7   ->   [22, 40, 24]

1..7 doubled is 2, 4, 6 | 8, 10, 12 | 14; each batch of (at most) three is summed
(12, 30, 14) and 10 is added: 22, 40, 24. The last batch holds the one item left over.
"""

import asyncio

import conveyor
from conveyor import batch_task, single_task


@single_task
async def double(x: int) -> int:
    await asyncio.sleep(0.01)  # stands in for real I/O
    return x * 2


@batch_task(max_size=3)
async def sum_batch(batch: list[int]) -> int:
    await asyncio.sleep(0.01)
    return sum(batch)


@single_task
async def add_ten(x: int) -> int:
    return x + 10


async def main() -> None:
    pipeline = double | sum_batch | add_ten

    # Stream the results: each one arrives as soon as it is ready (in input order).
    streamed = []
    async for result in pipeline(range(1, 8)):
        print("got", result)
        streamed.append(result)

    # Or run to the end and collect them all.
    collected = await pipeline(range(1, 8)).collect()
    print("collected:", collected)

    assert streamed == collected == [22, 40, 24], (streamed, collected)


if __name__ == "__main__":
    conveyor.run(main())

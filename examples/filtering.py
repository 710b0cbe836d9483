"""Filtering: a task that returns None drops the item.

    times_ten | keep_multiples_of_3 | batch_adder(max_size=2) | format_result

Over 1..6: 10, 20, 30, 40, 50, 60 -> only 30 and 60 are multiples of 3 -> one batch
[30, 60] -> 90 -> "Result: 90".
"""

import asyncio

import conveyor
from conveyor import batch_task, single_task


@single_task
async def times_ten(x: int) -> int:
    await asyncio.sleep(0.01)
    return x * 10


@single_task
async def keep_multiples_of_3(x: int) -> int | None:
    return x if x % 3 == 0 else None  # None drops the item


@batch_task(max_size=2)
async def batch_adder(batch: list[int]) -> int:
    print("  batch_adder got", batch)
    return sum(batch)


@single_task
async def format_result(x: int) -> str:
    return f"Result: {x}"


async def main() -> None:
    pipeline = times_ten | keep_multiples_of_3 | batch_adder | format_result
    results = await pipeline(range(1, 7)).collect()
    print(results)
    assert results == ["Result: 90"], results


if __name__ == "__main__":
    conveyor.run(main())

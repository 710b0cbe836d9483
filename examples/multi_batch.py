"""Several batch stages in one pipeline.

    summarize(max_size=3) -> (sum, count)   a tuple is ONE item (only a list is split)
    average               -> sum / count
    overall(max_size=10)  -> one report over all the averages

Over 1..10 the batches are [1, 2, 3], [4, 5, 6], [7, 8, 9], [10]:
    summaries (6, 3), (15, 3), (24, 3), (10, 1)
    averages  2.0, 5.0, 8.0, 10.0
    report    {'batches': 4, 'averages': [2.0, 5.0, 8.0, 10.0], 'mean': 6.25}
"""

import asyncio

import conveyor
from conveyor import batch_task, single_task


@batch_task(max_size=3)
async def summarize(batch: list[int]) -> tuple[int, int]:
    await asyncio.sleep(0.01)
    return sum(batch), len(batch)  # a tuple: one item downstream


@single_task
async def average(summary: tuple[int, int]) -> float:
    total, count = summary
    return total / count


@batch_task(max_size=10)
async def overall(averages: list[float]) -> dict[str, object]:
    return {
        "batches": len(averages),
        "averages": averages,
        "mean": sum(averages) / len(averages),
    }


async def main() -> None:
    items = range(1, 11)

    summaries = await summarize(items).collect()
    print("summaries:", summaries)
    assert summaries == [(6, 3), (15, 3), (24, 3), (10, 1)], summaries

    averages = await (summarize | average)(items).collect()
    print("averages: ", averages)
    assert averages == [2.0, 5.0, 8.0, 10.0], averages

    [report] = await (summarize | average | overall)(items).collect()
    print("report:   ", report)
    assert report == {"batches": 4, "averages": [2.0, 5.0, 8.0, 10.0], "mean": 6.25}, report


if __name__ == "__main__":
    conveyor.run(main())

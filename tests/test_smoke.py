from conveyor import batch_task, single_task


@single_task
async def double(x: int) -> int:
    return x * 2


@batch_task(max_size=3)
async def sum_batch(batch: list[int]) -> int:
    return sum(batch)


@single_task
def add_ten(x: int) -> int:
    return x + 10


async def test_quickstart_pipeline() -> None:
    pipeline = double | sum_batch | add_ten
    assert await pipeline(range(1, 8)).collect() == [22, 40, 24]
    assert await pipeline.as_completed(range(1, 8)).collect() == [22, 40, 24]

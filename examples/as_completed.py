"""As-completed mode, three ways, and a task reading the run's context.

Items 3, 1, 2 take 0.03, 0.01 and 0.02 s. In input order (the default) the results are
3, 1, 2; in completion order they are 1, 2, 3.
"""

import asyncio

import conveyor
from conveyor import ExecutionMode, get_current_context, single_task


@single_task
async def wait_for(x: int) -> int:
    await asyncio.sleep(x * 0.01)
    return x


@single_task
async def describe(x: int) -> dict[str, object]:
    ctx = get_current_context()  # the context of the run this call belongs to
    assert ctx is not None
    return {
        "item": x,
        "mode": ctx.execution_mode,
        "user": ctx.data.get("user"),
        "pipeline_id": ctx.pipeline_id,
    }


async def main() -> None:
    items = [3, 1, 2]
    pipeline = wait_for | describe

    # 1. Ordered (the default).
    ordered = await wait_for(items).collect()
    print("ordered:                  ", ordered)
    assert ordered == [3, 1, 2]

    # 2. pipeline.as_completed(items): one run in completion order.
    done = [r["item"] async for r in pipeline.as_completed(items)]
    print("pipeline.as_completed:    ", done)
    assert done == [1, 2, 3], done

    # 3. with_execution_mode: a copy of the pipeline that always runs as completed.
    fast_first = pipeline.with_execution_mode("as_completed")
    done = [r["item"] for r in await fast_first(items).collect()]
    print("with_execution_mode:      ", done)
    assert done == [1, 2, 3], done
    assert [r["item"] for r in await pipeline(items).collect()] == [3, 1, 2]  # unchanged

    # 4. stream.as_completed(): switch one stream before iterating it.
    stream = pipeline(items).as_completed()
    done = [r["item"] async for r in stream]
    print("stream.as_completed():    ", done)
    assert done == [1, 2, 3], done

    # The context: with_context sets context fields; your own values go under data=.
    for_ann = pipeline.with_context(data={"user": "ann"}).with_execution_mode("as_completed")
    results = await for_ann(items).collect()
    for result in results:
        print("  context seen by describe:", result)
    assert {r["user"] for r in results} == {"ann"}
    assert {r["mode"] for r in results} == {ExecutionMode.AS_COMPLETED}
    assert ExecutionMode.AS_COMPLETED == "as_completed"  # a str enum
    # Every run gets its own pipeline_id, shared by all the calls of that run.
    ids = {r["pipeline_id"] for r in results}
    assert len(ids) == 1 and None not in ids
    other = await for_ann(items).collect()
    assert {r["pipeline_id"] for r in other}.isdisjoint(ids)

    # Outside a run there is no current context.
    assert get_current_context() is None


if __name__ == "__main__":
    conveyor.run(main())

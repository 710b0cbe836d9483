"""A source task: ``pipeline()`` with no input calls the first task once, with no item.

The source here is an async generator that "fetches" three pages of records (a short
sleep per page stands in for an HTTP request) and yields the records one by one. They
stream straight into a batch task and then a single task: the first batch is stored
while later pages are still being fetched.
"""

import asyncio

import conveyor
from conveyor import batch_task, single_task

PAGES = [["ann", "bob", "cid", "dee"], ["eve", "fay", "gus", "hal"], ["ivy", "jon"]]
log: list[str] = []


@single_task
async def fetch_pages():
    for number, page in enumerate(PAGES, start=1):
        await asyncio.sleep(0.02)  # "GET /users?page=<number>"
        log.append(f"fetched page {number}")
        for name in page:
            yield {"page": number, "name": name}


@batch_task(max_size=3)
async def store(records: list[dict[str, object]]) -> list[str]:
    await asyncio.sleep(0.01)  # "INSERT ... VALUES (...), (...), (...)"
    names = [str(record["name"]) for record in records]
    log.append(f"stored {names}")
    return names  # a list: one item per name


@single_task
async def greet(name: str) -> str:
    return f"hello {name}"


async def main() -> None:
    pipeline = fetch_pages | store | greet
    results = []
    async for greeting in pipeline():  # no input: fetch_pages is the source
        print(greeting)
        results.append(greeting)

    names = [name for page in PAGES for name in page]
    assert results == [f"hello {name}" for name in names], results

    print("\n".join(log))
    # Streaming: the first batch was stored before the last page was fetched.
    assert log.index("stored ['ann', 'bob', 'cid']") < log.index("fetched page 3"), log


if __name__ == "__main__":
    conveyor.run(main())

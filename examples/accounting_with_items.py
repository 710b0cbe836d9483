"""Account for every URL of a crawl: ``pipeline.with_items()``.

A crawl ``fetch | parse | store`` over 30 URLs: some pages are missing (404), some are
images that ``parse`` leaves out (it returns ``None``: filtered), one is malformed and
``parse`` raises on it, and ``store`` writes pages in batches of 4. ``on_error="emit"``
turns each error into a ``Failure`` in the stream; ``with_items()`` pairs every result
and every ``Failure`` with the input URL it descends from, whatever the stages made of
it: ``(url, Failure)`` for a failed URL even when the failing stage's item was the
fetched page, not the URL, and ``(urls of the batch, result)`` for a batch's result. So
the script needs no URL threaded through each task's return value to check, at the end,
that every URL was stored, failed or filtered out, none missing.

The script serves the pages itself, on 127.0.0.1 with a free port, so it runs offline.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

import conveyor
from conveyor import Failure, batch_task, single_task

N = 30
MISSING = {3, 10, 17, 24}  # 404
IMAGES = {4, 9, 14, 19, 29}  # not HTML: parse filters them out
MALFORMED = {21}  # parse raises
stored: list[str] = []  # what the sink wrote


async def page(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    await asyncio.sleep(0.001 * (n % 4))
    if n in MISSING:
        raise web.HTTPNotFound()
    if n in IMAGES:
        return web.Response(body=b"\x89PNG...", content_type="image/png")
    if n in MALFORMED:
        return web.Response(text="<html><title>unclosed", content_type="text/html")
    return web.Response(text=f"<html><title>page {n}</title></html>", content_type="text/html")


@contextlib.asynccontextmanager
async def local_server() -> AsyncIterator[str]:
    app = web.Application()
    app.add_routes([web.get("/page/{n}", page)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@single_task(concurrency_limit=8, on_error="emit")
async def fetch(url: str, *, session: aiohttp.ClientSession) -> tuple[str, str]:
    async with session.get(url) as response:
        response.raise_for_status()  # a 404 raises: a Failure with the URL as its item
        return response.content_type, await response.text(errors="replace")


@single_task(on_error="emit")
def parse(page: tuple[str, str]) -> dict[str, str] | None:
    content_type, body = page
    if content_type != "text/html":
        return None  # not a page: filtered out
    if "</title>" not in body:
        raise ValueError("no </title>")  # (this Failure's item is the page, not the URL)
    return {"title": body.split("<title>")[1].split("</title>")[0]}


@batch_task(max_size=4)
async def store(pages: list[dict[str, str]]) -> dict[str, Any]:
    """Writes a batch; its one result (a summary) descends from all the batch's URLs."""
    stored.extend(page["title"] for page in pages)
    return {"rows": len(pages)}


async def main() -> None:
    async with local_server() as base:
        urls = [f"{base}/page/{n}" for n in range(N)]
        crawl = fetch.with_resources(session=aiohttp.ClientSession) | parse | store
        delivered: set[str] = set()
        failed: dict[str, Failure[Any]] = {}
        async for item, result in crawl.with_items()(urls):
            if isinstance(result, Failure):
                failed[item] = result  # item: the input URL, whatever stage failed
            else:
                assert len(item) == result["rows"]  # a batch's result: its items (URLs)
                delivered.update(item)
        filtered = set(urls) - delivered - set(failed)

    print(f"{len(urls)} URLs: {len(delivered)} stored, {len(failed)} failed, "
          f"{len(filtered)} filtered out")  # fmt: skip
    for url, failure in sorted(failed.items(), key=lambda pair: int(pair[0].rsplit("/", 1)[1])):
        error = failure.exception
        why = f"HTTP {error.status}" if isinstance(error, aiohttp.ClientResponseError) else error
        print(f"  {url}: failed in {failure.task_name} ({why}) on {failure.item!r:.40}")

    def numbers(some: set[str]) -> set[int]:
        return {int(url.rsplit("/", 1)[1]) for url in some}

    # Every URL is accounted for: stored, failed or filtered out, and none twice.
    assert len(delivered) + len(failed) + len(filtered) == N
    assert not delivered & set(failed)
    assert numbers(set(failed)) == MISSING | MALFORMED
    assert {failed[url].task_name for url in failed} == {"fetch", "parse"}
    assert numbers(filtered) == IMAGES  # the only URLs without a pair: parse's None
    assert numbers(delivered) == set(range(N)) - MISSING - IMAGES - MALFORMED
    assert sorted(stored) == sorted(f"page {n}" for n in numbers(delivered))
    print("every URL accounted for: none missing")


if __name__ == "__main__":
    conveyor.run(main())

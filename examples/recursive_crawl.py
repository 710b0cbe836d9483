"""A recursive crawl: the links found on each page are fed back into the same run.

``conveyor.Feedback([root], unique=True, max_items=...)`` is the input: the consumer
puts every link it finds back into it (``feed.extend``); ``unique=True`` drops the URLs
seen before, ``max_items`` caps the crawl's budget of pages. The run ends by itself when
no work is left: nothing queued, nothing in flight, and the consumer waiting for more.

``fetch`` is the crawler's (see ``examples/crawler.py``): one ``aiohttp.ClientSession``
per run, 5xx answers, timeouts and dropped connections retried with backoff, 4xx not;
a page that fails for good becomes a ``conveyor.Failure`` naming its URL and its error.
``parse`` reads the title and the links of a page with the standard library's
``html.parser``.

The script serves a small site itself, on 127.0.0.1 with a free port, so it runs
offline: two links lead nowhere (404), one page answers 503 to its first request, and
one page is linked from nowhere. The crawl must visit exactly the pages reachable from
the root (computed from the site below), and report the two broken links as failures.
"""

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin, urlsplit

import aiohttp
from aiohttp import web

import conveyor
from conveyor import Failure, Feedback, single_task

TIMEOUT = 1.0  # seconds per attempt


# -- the pipeline -----------------------------------------------------------------------------


def worth_retrying(exc: BaseException) -> bool:
    """Retry server errors (5xx), timeouts and dropped connections; never a 4xx answer."""
    return not isinstance(exc, aiohttp.ClientResponseError) or exc.status >= 500


@single_task(
    concurrency_limit=20,
    timeout=TIMEOUT,
    retry_attempts=4,
    retry_delay=0.05,
    retry_exponential_backoff=True,
    retry_on=(aiohttp.ClientError, asyncio.TimeoutError),
    retry_if=worth_retrying,
    on_error="emit",
)
async def fetch(url: str, *, session: aiohttp.ClientSession) -> tuple[str, str]:
    async with session.get(url) as response:
        response.raise_for_status()
        return url, await response.text()


@dataclasses.dataclass(frozen=True)
class Page:
    url: str
    title: str
    links: list[str]  # absolute URLs, without #fragments, on the same host, in order


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.hrefs: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [value for name, value in attrs if name == "href" and value]
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


@single_task
def parse(page: tuple[str, str]) -> Page:
    url, html = page
    parser = _PageParser()
    parser.feed(html)
    host = urlsplit(url).netloc
    links = [urldefrag(urljoin(url, href)).url for href in parser.hrefs]
    return Page(url, parser.title, [link for link in links if urlsplit(link).netloc == host])


def open_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20))


@dataclasses.dataclass
class CrawlReport:
    pages: dict[str, Page]  # URL -> the page fetched and parsed
    failed: dict[str, Failure[str]]  # URL -> the Failure that took its place
    feed: Feedback[str]


async def crawl_site(
    root: str,
    max_pages: int = 1_000,
    session: Callable[[], aiohttp.ClientSession] = open_session,
) -> CrawlReport:
    """Crawl every page reachable from ``root`` (at most ``max_pages`` URLs in all)."""
    feed = Feedback([root], unique=True, max_items=max_pages)
    report = CrawlReport({}, {}, feed)
    async for result in (fetch.with_resources(session=session) | parse).as_completed(feed):
        if isinstance(result, Failure):
            report.failed[result.item] = result
        else:
            report.pages[result.url] = result
            feed.extend(result.links)  # more work for this run; seen URLs are dropped
    return report


# -- a local site to crawl --------------------------------------------------------------------

SITE = {  # path -> the paths its page links to
    "/": ["/about", "/blog/", "/blog/", "/missing"],
    "/about": ["/", "/team#people"],
    "/blog/": ["1", "2", "/about"],  # relative links: /blog/1 and /blog/2
    "/blog/1": ["/blog/2", "/gone"],
    "/blog/2": ["/blog/1", "/"],
    "/team": [],
    "/archive": ["/blog/1"],  # nobody links here: not reachable
}
FLAKY = "/blog/2"  # answers 503 to its first request
requests: Counter[str] = Counter()


async def page(request: web.Request) -> web.Response:
    path = request.path
    requests[path] += 1
    if path not in SITE:
        raise web.HTTPNotFound(text="no such page")
    if path == FLAKY and requests[path] == 1:
        raise web.HTTPServiceUnavailable(text="busy, try again")
    await asyncio.sleep(0.005)
    links = "".join(f'<a href="{href}">{href}</a> ' for href in SITE[path])
    body = f"<html><head><title>{path}</title></head><body>{links}</body></html>"
    return web.Response(text=body, content_type="text/html")


@contextlib.asynccontextmanager
async def local_server() -> AsyncIterator[str]:
    """Serve SITE on 127.0.0.1 (a free port) for the duration of the block."""
    app = web.Application()
    app.add_routes([web.get("/{path:.*}", page)])
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def reachable(root: str) -> set[str]:
    """The paths a crawl from ``root`` finds (pages and broken links), by SITE alone."""
    seen, todo = {root}, [root]
    while todo:
        here = todo.pop()
        for href in SITE.get(here, []):
            path = urldefrag(urljoin(here, href)).url  # as a browser resolves it
            if path not in seen:
                seen.add(path)
                todo.append(path)
    return seen


async def main() -> None:
    async with local_server() as base_url:
        report = await crawl_site(base_url + "/")

    def path(url: str) -> str:
        return urlsplit(url).path

    expected = reachable("/")
    found = {path(url) for url in report.pages} | {path(url) for url in report.failed}
    assert found == expected, (found, expected)
    assert not report.pages.keys() & report.failed.keys()
    for url, failure in sorted(report.failed.items()):
        error = failure.exception
        assert isinstance(error, aiohttp.ClientResponseError) and error.status == 404
        assert failure.attempts == 1  # a 404 is not retried
        print(f"broken link: {path(url)} ({error.status} {error.message})")
    assert {path(url) for url in report.failed} == {"/missing", "/gone"}
    assert requests[FLAKY] == 2  # a 503, retried once
    assert requests["/archive"] == 0 and all(n <= 2 for n in requests.values())
    for url, found_page in sorted(report.pages.items()):
        print(f"visited {path(url)!r}: {len(found_page.links)} links")
    print(f"{len(report.pages)} pages, {len(report.failed)} broken links; {report.feed}")


if __name__ == "__main__":
    conveyor.run(main())

"""Classify each item, then route it to a different processor: ``conveyor.route``.

Uploaded documents come in one stream. A first task classifies each one (by its file
name here; a model or a content sniffer in real life), then ``conveyor.route`` sends it
to exactly one processor by its class: images to ``thumbnail`` (one call per image, a
few at once), texts to ``index`` (a batch task: one bulk call per 4 texts, as a search
index wants them), and everything else (``default=None``) on unchanged. The processors'
results rejoin the stream in input order: the results come out in the order the
uploads came in, whatever branch each went through and however long it took.

Each branch keeps its own options (concurrency, batching, error policy), and the run's
statistics list each branch's stage under the route's name.
"""

import asyncio
from typing import Any

import conveyor
from conveyor import batch_task, single_task

UPLOADS = [
    "cat.jpg", "notes.txt", "report.txt", "song.mp3", "dog.png", "todo.txt",
    "plan.txt", "beach.jpg", "data.bin", "poem.txt", "map.png", "readme.txt",
]  # fmt: skip
KINDS = {"jpg": "image", "png": "image", "txt": "text"}
index_calls: list[list[str]] = []  # the batches the index was sent


@single_task
def classify(name: str) -> dict[str, Any]:
    return {"name": name, "kind": KINDS.get(name.rsplit(".", 1)[-1], "other")}


@single_task(concurrency_limit=3)
async def thumbnail(doc: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.02 if doc["name"] == "cat.jpg" else 0.005)  # (the first is slow)
    return {**doc, "thumbnail": f"thumbs/{doc['name']}.small.jpg"}


@batch_task(max_size=4, max_wait=0.05)
async def index(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A bulk call: one result per document, in the batch's order (each document gets
    its own result back)."""
    index_calls.append([doc["name"] for doc in docs])
    await asyncio.sleep(0.01)
    return [{**doc, "indexed": True} for doc in docs]


def kind(doc: dict[str, Any]) -> str:
    return doc["kind"]


async def main() -> None:
    pipeline = classify | conveyor.route(kind, {"image": thumbnail, "text": index}, default=None)
    stream = pipeline(UPLOADS)
    results = await stream.collect()
    for result in results:
        print(result)
    print(stream.stats)

    # One result per upload, in the order they came (the slow first image held none of
    # the texts back from being processed, only from being delivered before it).
    assert [doc["name"] for doc in results] == UPLOADS
    for doc in results:
        if doc["kind"] == "image":
            assert doc["thumbnail"].startswith("thumbs/"), doc
        elif doc["kind"] == "text":
            assert doc["indexed"], doc
        else:  # no branch for "other": passed on unchanged
            assert doc == {"name": doc["name"], "kind": "other"}, doc
    # The texts went to the index in bulk: 6 texts, a batch of 4 and the remainder of 2.
    assert sorted(len(batch) for batch in index_calls) == [2, 4], index_calls
    assert sorted(name for batch in index_calls for name in batch) == sorted(
        name for name in UPLOADS if name.endswith(".txt")
    )
    names = [stage.name for stage in stream.stats.stages]
    print(names)
    assert len(names) == 4 and names[2].endswith("/thumbnail") and names[3].endswith("/index")


if __name__ == "__main__":
    conveyor.run(main())

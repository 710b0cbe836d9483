"""CPU-bound work in worker processes, next to async I/O on the loop.

    fetch (async, on the loop) | checksum (executor="process") | report

``checksum`` is pure-Python CPU work: on the event loop it would stall every other
stage. ``executor="process"`` runs it in a pool of worker processes (one per core) that
the run opens and closes; items travel in chunks whose size conveyor measures. The
function is defined at the top level of this module, and the entry point is guarded by
``if __name__ == "__main__":``, because worker processes import this module by name.
"""

import asyncio
import os
import time

import conveyor
from conveyor import single_task


@single_task
async def fetch(n: int) -> bytes:
    await asyncio.sleep(0.001)  # stands in for a download
    return n.to_bytes(4, "big") * 2_000


@single_task(executor="process")
def checksum(data: bytes) -> tuple[int, int]:
    """Adler-32, by hand: about a millisecond of pure-Python CPU per item."""
    a, b = 1, 0
    for byte in data:
        a = (a + byte) % 65521
        b = (b + a) % 65521
    return (b << 16) | a, os.getpid()


async def main() -> None:
    started = time.perf_counter()
    results = await (fetch | checksum)(range(400)).collect()
    elapsed = time.perf_counter() - started
    workers = {pid for _, pid in results}
    print(f"{len(results)} checksums in {elapsed:.2f} s on {len(workers)} worker process(es)")
    assert len(results) == 400 and os.getpid() not in workers
    print(repr(checksum))


if __name__ == "__main__":
    conveyor.run(main())

"""A check shared by the cluster executors' tests (Dask, Ray): a chunk's pickled copy,
held until its answer is in, takes places in the window's byte bound and gives them back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import AsyncStream, single_task


async def check_pickled_copies_are_counted(
    executor: Any, blocks: int, monkeypatch: pytest.MonkeyPatch
) -> AsyncStream[int]:
    """Run ``len`` on ``executor`` over ``blocks`` items of 1 MiB under an 8 MiB byte
    bound; check every copy took a place per MiB and all came back. The stream, for
    more checks."""
    from conveyor._engine._weight import Weigher

    taken: list[int] = []
    hold = Weigher.hold

    def counted(self: Weigher, copy: int) -> int:
        places = hold(self, copy)
        taken.append(places)
        return places

    monkeypatch.setattr(Weigher, "hold", counted)

    def items() -> Iterator[bytes]:
        for n in range(blocks):
            yield bytes([n]) * (1 << 20)

    task = single_task(executor=executor)(len)
    stream = task.with_context(max_in_flight_bytes=8 << 20)(items())
    assert await stream.collect() == [1 << 20] * blocks
    assert taken and all(places >= 1 for places in taken)  # a place per MiB copied
    assert sum(taken) >= blocks
    assert stream._run is not None and stream._run.ledger.tokens == 0  # all given back
    return stream

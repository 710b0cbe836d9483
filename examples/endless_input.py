"""An endless input, consumed for a while and then abandoned -- cleanly.

* The input is pulled lazily: conveyor only reads more while the run's window
  (``max_in_flight``) has room, so memory stays bounded however long the input is.
* Leaving ``async with`` (here through ``break``) cancels what is still in flight,
  closes the input (its ``finally`` runs) and waits for every task of the run.
"""

import asyncio

import conveyor
from conveyor import single_task

MAX_IN_FLIGHT = 16
stats = {"produced": 0, "consumed": 0, "most_in_flight": 0, "closed": False}


async def sensor_readings():
    """Never ends on its own."""
    n = 0
    try:
        while True:
            stats["produced"] += 1
            in_flight = stats["produced"] - stats["consumed"]
            stats["most_in_flight"] = max(stats["most_in_flight"], in_flight)
            yield n
            n += 1
    finally:
        stats["closed"] = True  # runs when conveyor closes the input


@single_task
async def calibrate(reading: int) -> float:
    await asyncio.sleep(0.001)
    return reading * 0.5


async def main() -> None:
    pipeline = (calibrate | calibrate).with_context(max_in_flight=MAX_IN_FLIGHT)

    results = []
    async with pipeline(sensor_readings()) as stream:
        async for value in stream:
            stats["consumed"] += 1
            results.append(value)
            if len(results) == 100:
                break

    print("first results:", results[:5])
    print(stats)
    assert results == [n * 0.25 for n in range(100)]
    assert stats["closed"], "the input was not closed"
    # Never more than MAX_IN_FLIGHT items read and not yet delivered.
    assert stats["most_in_flight"] <= MAX_IN_FLIGHT, stats
    assert stats["produced"] <= 100 + MAX_IN_FLIGHT, stats

    # The same with an explicit aclose() instead of `async with`.
    stats.update(produced=0, consumed=0, most_in_flight=0, closed=False)
    stream = pipeline(sensor_readings())
    first = await anext(stream)
    stats["consumed"] += 1
    await stream.aclose()
    print("after aclose():", stats)
    assert first == 0.0 and stats["closed"]
    assert stats["most_in_flight"] <= MAX_IN_FLIGHT


if __name__ == "__main__":
    conveyor.run(main())

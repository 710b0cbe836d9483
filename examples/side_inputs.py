"""Side inputs: extra arguments a task gets with every item.

``task.with_inputs(*args, **kwargs)`` returns a copy of the task that is called as
``func(item, *args, **kwargs)``. Each side input is resolved once at the start of every
run (never cached across runs):

* a plain value is passed as is;
* a coroutine (or other awaitable) is awaited -- a coroutine can be awaited only once, so
  it serves one run;
* an async iterable -- an async generator, an AsyncStream (another pipeline's results) --
  contributes its FIRST item.
"""

import asyncio

import conveyor
from conveyor import batch_task, single_task

calls = {"load_rate": 0}


@single_task
async def convert(amount: float, rate: float, *, currency: str = "EUR") -> str:
    return f"{amount * rate:.2f} {currency}"


@batch_task(max_size=2)
async def total(amounts: list[float], rate: float) -> float:
    return round(sum(amounts) * rate, 2)


async def load_rate() -> float:
    """A coroutine: e.g. fetch today's exchange rate once per run."""
    calls["load_rate"] += 1
    await asyncio.sleep(0.01)
    return 0.5


async def rate_feed():
    """An async generator: only its first item is used."""
    yield 2.0
    yield 3.0  # never reached by a single run


class LiveRate:
    """A re-iterable async iterable: every run that uses it reads a fresh rate."""

    def __init__(self) -> None:
        self.reads = 0

    async def __aiter__(self):
        self.reads += 1
        yield float(self.reads)


@single_task
async def fetch_rate(currency: str) -> float:
    await asyncio.sleep(0.01)
    return {"GBP": 0.8, "JPY": 150.0}[currency]


async def main() -> None:
    amounts = [10.0, 20.0, 30.0]

    # 1. A plain value (and a keyword argument): convert(amount, 1.1, currency="USD").
    plain = await convert.with_inputs(1.1, currency="USD")(amounts).collect()
    print("plain value:   ", plain)
    assert plain == ["11.00 USD", "22.00 USD", "33.00 USD"], plain

    # 2. A coroutine, awaited once at the start of the run (not once per item).
    awaited = await convert.with_inputs(load_rate())(amounts).collect()
    print("coroutine:     ", awaited, "| load_rate called", calls["load_rate"], "time(s)")
    assert awaited == ["5.00 EUR", "10.00 EUR", "15.00 EUR"], awaited
    assert calls["load_rate"] == 1

    # A coroutine serves one run: for another run, pass a fresh coroutine.
    again = await convert.with_inputs(load_rate())(amounts[:1]).collect()
    assert again == ["5.00 EUR"] and calls["load_rate"] == 2

    # 3. An async generator: its first item (2.0) is the side input.
    first = await convert.with_inputs(rate_feed())(amounts).collect()
    print("async gen:     ", first)
    assert first == ["20.00 EUR", "40.00 EUR", "60.00 EUR"], first

    # 4. Another pipeline's stream: its first result (the GBP rate) is the side input.
    gbp = fetch_rate(["GBP"])
    streamed = await convert.with_inputs(gbp, currency="GBP")(amounts).collect()
    print("AsyncStream:   ", streamed)
    assert streamed == ["8.00 GBP", "16.00 GBP", "24.00 GBP"], streamed

    # 5. Resolved at the start of EVERY run, never cached: two runs, two fresh rates.
    live = convert.with_inputs(LiveRate())
    run1 = await live([10.0]).collect()
    run2 = await live([10.0]).collect()
    print("per run:       ", run1, run2)
    assert (run1, run2) == (["10.00 EUR"], ["20.00 EUR"]), (run1, run2)

    # Batch tasks too: total(batch, rate).
    totals = await total.with_inputs(0.5)(amounts).collect()
    print("batch task:    ", totals)
    assert totals == [15.0, 15.0], totals

    # with_inputs returns a new task: the original is unchanged.
    try:
        await convert([1.0]).collect()  # convert(1.0) -> missing the `rate` argument
    except TypeError as exc:
        print("without inputs:", exc, exc.__notes__)
    else:
        raise AssertionError("expected a TypeError")


if __name__ == "__main__":
    conveyor.run(main())

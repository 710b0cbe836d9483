"""Circuit breakers (``circuit_breaker=conveyor.CircuitBreaker(...)``).

Against the real HTTP server of tests/http_server.py (``/service/{n}``: 503 while the
test's outage switch is on; the server's request log says what reached it), on the real
clock with short recovery timeouts and generous margins: a breaker opens within
``failure_threshold`` failures of an outage, no request reaches the server while it is
open, one probe goes at ``recovery_timeout``, it closes when the server is back, and the
outage's items come out as the policy says. The precise timing (when the probe goes,
retries, timeouts, ``on_open="wait"``) on looptime's virtual clock, with a service that
is a plain ``async def``. A hypothesis property: random settings and failure patterns never
lose or duplicate an item, and sequential runs match a reference model of the breaker.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from conftest import run_on_virtual_clock
from http_server import LocalServer, serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor
from conveyor import CircuitBreaker, CircuitOpenError, Failure, batch_task, single_task
from conveyor._engine import _log


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    async with serve() as local:
        yield local


async def paced(n: int, gap: float, at: dict[int, Callable[[], None]] | None = None) -> Any:
    """Items ``0..n-1``, one every ``gap`` seconds; ``at[i]()`` runs before item ``i``."""
    for i in range(n):
        if at and i in at:
            at[i]()
        yield i
        await asyncio.sleep(gap)


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.conveyor_event  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "conveyor_event", "").startswith("circuit_")
    ]


def kinds(results: list[Any]) -> list[str]:
    """Each result as 'ok', 'open' (refused by the breaker) or 'error' (the call failed)."""
    return [
        "ok"
        if not isinstance(r, Failure)
        else "open"
        if isinstance(r.exception, CircuitOpenError)
        else "error"
        for r in results
    ]


# -- against the real server ---------------------------------------------------------------


async def test_an_outage_opens_the_breaker_no_request_while_open_one_probe_closes_it(
    server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=0.5, name="service")

    def outage(on: bool) -> Callable[[], None]:
        def switch() -> None:
            server.stats.outage = on

        return switch

    async with aiohttp.ClientSession(raise_for_status=True) as session:

        @single_task(circuit_breaker=breaker, on_error="emit", concurrency_limit=1)
        async def fetch(n: int) -> int:
            async with session.get(f"{server.url}/service/{n}") as response:
                return int((await response.json())["n"])

        # Down from item 5, back at item 10 (0.25 s later: before the probe is due).
        stream = fetch(paced(30, 0.05, {5: outage(True), 10: outage(False)}))
        results = [r async for r in stream]

    got = kinds(results)
    assert got[:5] == ["ok"] * 5
    assert got[5:8] == ["error"] * 3  # opened by failure_threshold failures
    first_ok_after = got.index("ok", 8)
    assert set(got[8:first_ok_after]) == {"open"} and first_ok_after > 8
    assert got[first_ok_after:] == ["ok"] * (30 - first_ok_after)
    assert [r for r in results if not isinstance(r, Failure)] == [
        i for i, kind in enumerate(got) if kind == "ok"
    ]
    for failure in results[5:8]:
        assert isinstance(failure.exception, aiohttp.ClientResponseError)
        assert failure.exception.status == 503

    log = server.stats.requests_for("/service/")
    assert [entry.path for entry in log] == [
        f"/service/{i}" for i, k in enumerate(got) if k != "open"
    ]
    third_503 = [entry for entry in log if entry.status == 503][-1]
    probe = log[log.index(third_503) + 1]
    # Nothing reached the server while open; the probe went once recovery_timeout was up.
    assert probe.arrived - third_503.arrived >= 0.5 - 0.01  # (uvloop's clock: in ms)
    assert probe.status == 200
    assert probe.arrived - third_503.arrived < 0.5 + 0.5  # (the next item after it: 50 ms)

    stats = stream.stats.stage("fetch")
    assert stats.circuit_opened == 1
    assert stats.circuit_rejected == got.count("open")
    assert stats.emitted == got.count("open") + 3
    assert events(caplog) == ["circuit_open", "circuit_half_open", "circuit_closed"]
    records = [r for r in caplog.records if getattr(r, "conveyor_event", "") == "circuit_open"]
    fields = {k: v for k, v in vars(records[0]).items() if k.startswith("conveyor_")}
    assert set(fields) <= set(_log.FIELDS)
    assert fields["conveyor_circuit"] == "service"
    assert fields["conveyor_failures"] == 3
    assert fields["conveyor_task"] == "fetch"
    assert fields["conveyor_error_type"] == "ClientResponseError"


async def test_under_skip_item_the_outage_is_skipped_and_counted(server: LocalServer) -> None:
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=0.3)

    def switch(on: bool) -> Callable[[], None]:
        return lambda: setattr(server.stats, "outage", on)

    async with aiohttp.ClientSession(raise_for_status=True) as session:

        @single_task(circuit_breaker=breaker, on_error="skip_item", concurrency_limit=1)
        async def fetch(n: int) -> int:
            async with session.get(f"{server.url}/service/{n}") as response:
                return int((await response.json())["n"])

        stream = fetch(paced(20, 0.05, {3: switch(True), 6: switch(False)}))
        results = [r async for r in stream]

    called = {int(entry.path.rsplit("/", 1)[1]): entry.status for entry in server.stats.log}
    assert results == [n for n, status in sorted(called.items()) if status == 200]
    assert [called.get(n) for n in (3, 4)] == [503, 503]
    refused = [n for n in range(20) if n not in called]
    assert refused and refused == list(range(5, 5 + len(refused)))  # while open: no call
    stats = stream.stats.stage("fetch")
    assert stats.skipped == 2 + len(refused) == 20 - len(results)
    assert (stats.circuit_opened, stats.circuit_rejected) == (1, len(refused))


async def test_one_breaker_shared_by_two_tasks(server: LocalServer) -> None:
    """One service behind two tasks: the failures of one open the breaker for both."""
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=60.0)
    server.stats.outage = True
    async with aiohttp.ClientSession(raise_for_status=True) as session:

        def task(base: int) -> Any:
            @single_task(
                circuit_breaker=breaker, on_error="emit", concurrency_limit=1, task_name=f"t{base}"
            )
            async def fetch(n: int) -> int:
                async with session.get(f"{server.url}/service/{base + n}") as response:
                    return int((await response.json())["n"])

            return fetch

        first, second = task(0), task(100)
        one = await first(range(5)).collect()
        two = await (second | first)(range(5)).collect()
    assert kinds(one) == ["error"] * 3 + ["open"] * 2
    assert kinds(two) == ["open"] * 5
    assert [e.path for e in server.stats.log] == ["/service/0", "/service/1", "/service/2"]
    assert two[0].task_name == "t100"  # refused in the first task, passed through the second


async def test_on_open_wait_holds_calls_until_the_probe_succeeds(server: LocalServer) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=0.3, on_open="wait")
    server.stats.outage = True
    loop = asyncio.get_running_loop()
    loop.call_later(0.15, setattr, server.stats, "outage", False)
    async with aiohttp.ClientSession(raise_for_status=True) as session:

        @single_task(circuit_breaker=breaker, on_error="emit", concurrency_limit=3)
        async def fetch(n: int) -> int:
            async with session.get(f"{server.url}/service/{n}") as response:
                return int((await response.json())["n"])

        stream = fetch(range(10))
        results = await stream.collect()
    # Items 0-2 start at once and fail (the first failure opens it: the others come
    # while it is open, and change nothing); 3-5 wait for it, then run: none is refused.
    assert kinds(results) == ["error"] * 3 + ["ok"] * 7
    assert results[3:] == list(range(3, 10))
    log = server.stats.requests_for("/service/")
    assert len(log) == 10  # every item called once: none refused, none twice
    assert log[3].arrived - log[2].arrived >= 0.3 - 0.01  # the probe, at recovery_timeout
    assert stream.stats.stage("fetch").circuit_rejected == 3  # (the three calls that waited)


# -- on the virtual clock ----------------------------------------------------------------


class Down(ConnectionError):
    pass


class Service:
    """A service down while ``down(loop time)``: its calls' start times on the loop."""

    def __init__(self, down: Callable[[float], bool], delay: float = 0.0) -> None:
        self.down = down
        self.delay = delay
        self.calls: list[float] = []

    async def __call__(self, n: int) -> int:
        now = asyncio.get_running_loop().time()
        self.calls.append(now)
        await asyncio.sleep(self.delay)
        if self.down(now):
            raise Down(f"down at {now:g}")
        return n


@pytest.mark.looptime
async def test_the_probe_goes_at_recovery_timeout_and_a_failed_probe_reopens() -> None:
    service = Service(lambda t: 5 <= t < 20)
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=10.0)
    task = single_task(circuit_breaker=breaker, on_error="emit", concurrency_limit=1)(service)
    results = await task(paced(40, 1.0)).collect()
    # Calls at 5, 6, 7 fail: open at 7; the probe at 17 fails: open again; probe at 27.
    assert service.calls == [*range(8), 17, *range(27, 40)]
    assert kinds(results)[:8] == ["ok"] * 5 + ["error"] * 3
    assert kinds(results)[17] == "error"
    assert kinds(results)[27:] == ["ok"] * 13
    refused = [r for r in results if kinds([r]) == ["open"]]
    assert len(refused) == 40 - len(service.calls)
    assert refused[0].exception.reopens_at == 17.0
    assert refused[0].exception.reopens_in == 9.0  # refused at 8
    assert refused[0].exception.breaker is breaker


@pytest.mark.looptime
async def test_half_open_calls_probes_must_all_succeed() -> None:
    service = Service(lambda t: 2 <= t < 4)
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=5.0, half_open_calls=2)
    task = single_task(circuit_breaker=breaker, on_error="emit", concurrency_limit=1)(service)
    await task(paced(15, 1.0)).collect()
    assert service.calls == [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14]
    # Two probes at once: a third call is refused meanwhile, though a slot is free.
    t0 = asyncio.get_running_loop().time()
    slow = Service(lambda t: t - t0 < 1, delay=2.0)
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=5.0, half_open_calls=2)
    task = single_task(circuit_breaker=breaker, on_error="emit", concurrency_limit=3)(slow)

    async def items() -> Any:
        yield 0  # fails at 2: open until 7
        await asyncio.sleep(7.25)
        for i in range(1, 5):
            yield i
        await asyncio.sleep(2.75)
        yield 5

    results = await task(items()).collect()
    assert kinds(results) == ["error", "ok", "ok", "open", "open", "ok"]
    assert [t - t0 for t in slow.calls] == [
        0.0,
        7.25,
        7.25,
        10.0,
    ]  # closed at 9.25, by the second probe


@pytest.mark.looptime
async def test_an_open_breaker_stops_retries_and_its_error_is_not_retried() -> None:
    service = Service(lambda t: True)
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=100.0)
    task = single_task(
        circuit_breaker=breaker, on_error="emit", retry_attempts=5, retry_delay=1.0, retry_jitter=0
    )(service)
    (failure,) = await task([0]).collect()
    assert service.calls == [0.0, 1.0]  # the second failure opened it: no third call
    assert isinstance(failure.exception, CircuitOpenError)
    assert failure.attempts == 3  # (the third attempt was refused, and not retried)


@pytest.mark.looptime
async def test_a_timeout_counts_as_a_failure() -> None:
    service = Service(lambda t: False, delay=100.0)
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=50.0)
    task = single_task(circuit_breaker=breaker, on_error="emit", timeout=1.0, concurrency_limit=1)
    results = await task(service)(range(4)).collect()
    assert [type(r.exception) for r in results] == [TimeoutError] * 2 + [CircuitOpenError] * 2
    assert service.calls == [0.0, 1.0]


@pytest.mark.looptime
async def test_only_failure_on_counts_and_a_success_resets_the_count() -> None:
    class Other(ValueError):
        pass

    async def service(n: int) -> int:
        now = asyncio.get_running_loop().time()
        if now in (5, 6):
            raise Other("not the service's fault: neither counts nor resets")
        if now in (0, 1, 3, 4, 7):
            raise Down("down")
        return n

    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=100.0, failure_on=Down)
    task = single_task(circuit_breaker=breaker, on_error="emit", concurrency_limit=1)(service)
    results = await task(paced(10, 1.0)).collect()
    # 2 failures, a success (reset), 2 failures, 2 other errors, a third failure: open.
    assert kinds(results) == ["error", "error", "ok"] + ["error"] * 5 + ["open"] * 2


@pytest.mark.looptime
async def test_under_on_error_fail_the_refusal_fails_the_run() -> None:
    service = Service(lambda t: t >= 1)
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=100.0)
    task = single_task(
        circuit_breaker=breaker, concurrency_limit=1, retry_attempts=2, retry_delay=0.5
    )(service)
    with pytest.raises(CircuitOpenError) as info:
        await task(paced(5, 1.0)).collect()
    assert service.calls == [0.0, 1.0]  # item 1 fails and opens it; its retry is refused
    assert any("raised by task" in note for note in info.value.__notes__)


@pytest.mark.looptime
async def test_on_open_wait_waits_on_the_virtual_clock_and_is_cancellable() -> None:
    service = Service(lambda t: t < 3)
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10.0, on_open="wait")
    task = single_task(circuit_breaker=breaker, on_error="emit", concurrency_limit=4)(service)
    loop = asyncio.get_running_loop()
    start = loop.time()
    results = await task(paced(6, 1.0)).collect()
    assert kinds(results) == ["error", "ok", "ok", "ok", "ok", "ok"]
    assert service.calls == [0.0, 10.0, 10.0, 10.0, 10.0, 10.0]  # (the probe first)
    assert loop.time() - start == pytest.approx(10.0)
    # A run closed while its calls wait leaves nothing behind.
    other = CircuitBreaker(failure_threshold=1, recovery_timeout=1000.0, on_open="wait")
    waiting = single_task(circuit_breaker=other, on_error="emit")(Service(lambda t: True))
    stream = waiting(paced(5, 1.0))
    async with stream:
        first = await anext(stream)
        assert isinstance(first, Failure)
        await asyncio.sleep(5)
    assert loop.time() - start < 100


def test_a_waiting_call_starts_when_the_reopening_time_is_not_on_the_clock() -> None:
    """Open at 0.2 for 0.1 s: until 0.30000000000000004, which a virtual clock (rounding
    to its resolution) never shows. The waiting call starts at 0.3 all the same (it used
    to sleep for ever shorter times, the clock standing still)."""
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        service = Service(lambda t: t < 0.25)
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=0.1, on_open="wait")
        task = single_task(circuit_breaker=breaker, on_error="emit", concurrency_limit=1)
        await asyncio.sleep(0.2)
        results = await task(service)(range(2)).collect()
        assert kinds(results) == ["error", "ok"]
        assert service.calls == [0.2, 0.3]

    run_on_virtual_clock(main(), errors, real_timeout=10.0)
    assert not errors


@pytest.mark.looptime
async def test_a_batch_task_behind_a_breaker_skips_refused_items_once() -> None:
    calls: list[list[int]] = []

    @batch_task(
        max_size=2,
        circuit_breaker=CircuitBreaker(failure_threshold=1, recovery_timeout=100.0),
        on_error="skip_item",
    )
    async def store(batch: list[int]) -> list[int]:
        calls.append(batch)
        if 3 in batch:
            raise Down("down")
        return batch

    stream = store(range(8))
    assert await stream.collect() == [0, 1]
    # [2, 3] fails, is split: [2] refused, [3] refused; then [4, 5], [6, 7] refused (split).
    assert calls == [[0, 1], [2, 3]]
    assert stream.stats.stage("store").skipped == 6


@pytest.mark.parametrize("executor", ["inline", "thread"])
async def test_plain_functions_inline_fused_and_on_threads(executor: str) -> None:
    """A plain def on the loop (its calls fused into the pump's tight loop) and on
    threads (a Future: awaited in the call's task) ask the breaker too."""
    called: list[int] = []

    def double(x: int) -> int:
        called.append(x)
        if x in (2, 3):
            raise Down(x)
        return 2 * x

    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=100.0)
    task = single_task(
        circuit_breaker=breaker, on_error="emit", executor=executor, concurrency_limit=1
    )(double)
    results = await (task | single_task(lambda y: y + 1))(range(6)).collect()
    assert kinds(results) == ["ok", "ok", "error", "error", "open", "open"]
    assert results[:2] == [1, 3] and called == [0, 1, 2, 3]


def test_a_breaker_keeps_no_event_loop_alive() -> None:
    breaker = CircuitBreaker(failure_threshold=1)

    async def once() -> None:
        @single_task(circuit_breaker=breaker, on_error="emit")
        async def fail(x: int) -> int:
            raise Down(x)

        assert kinds(await fail(range(3)).collect()) == ["error", "open", "open"]

    for _ in range(2):  # (each asyncio.run: a new loop, a fresh state)
        asyncio.run(once())
    gc.collect()
    assert len(breaker._states) == 0


def test_bad_options_name_the_parameter_and_the_fix() -> None:
    with pytest.raises(ValueError, match="failure_threshold must be an int >= 1"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="recovery_timeout must be a number of seconds > 0"):
        CircuitBreaker(recovery_timeout=-1)
    with pytest.raises(ValueError, match="half_open_calls must be an int >= 1"):
        CircuitBreaker(half_open_calls=True)
    with pytest.raises(TypeError, match="failure_on must be an exception type"):
        CircuitBreaker(failure_on=(int,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"on_open must be 'fail' .* or 'wait'"):
        CircuitBreaker(on_open="retry")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"circuit_breaker must be a conveyor.CircuitBreaker"):
        single_task(circuit_breaker=5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"circuit_breaker=conveyor.CircuitBreaker\("):
        batch_task(max_size=2, circuit_breaker=(5, 30))  # type: ignore[call-overload]
    assert conveyor.CircuitBreaker is CircuitBreaker


# -- properties ------------------------------------------------------------------------


def reference(
    failing: list[bool], threshold: int, recovery: float, probes: int, gap: float, delay: float
) -> list[str]:
    """What a sequential run (one call at a time, item ``i`` at ``i * gap``, each call
    taking ``delay``) makes of each item: 'ok', 'error' or 'open' (see conveyor.breaker)."""
    state, failures, reopens, probed = "closed", 0, 0.0, 0
    out = []
    for i, fails in enumerate(failing):
        t = i * gap
        if state == "open":
            if t < reopens:
                out.append("open")
                continue
            state, probed = "half_open", 0
        out.append("error" if fails else "ok")
        if state == "half_open":
            if fails:
                state, reopens = "open", t + delay + recovery
            else:
                probed += 1
                if probed >= probes:
                    state, failures = "closed", 0
        elif fails:
            failures += 1
            if failures >= threshold:
                state, reopens = "open", t + delay + recovery
        else:
            failures = 0
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    failing=st.lists(st.booleans(), min_size=1, max_size=40),
    threshold=st.integers(1, 4),
    recovery=st.sampled_from([0.5, 1.0, 2.5, 5.0]),
    probes=st.integers(1, 3),
    delay=st.sampled_from([0.0, 0.1, 0.4]),
    policy=st.sampled_from(["emit", "skip_item"]),
)
def test_sequential_runs_match_the_reference_model(
    failing: list[bool],
    threshold: int,
    recovery: float,
    probes: int,
    delay: float,
    policy: str,
) -> None:
    gap = 0.5
    expected = reference(failing, threshold, recovery, probes, gap, delay)
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        async def service(n: int) -> int:
            await asyncio.sleep(delay)
            if failing[n]:
                raise Down(n)
            return n

        breaker = CircuitBreaker(threshold, recovery, half_open_calls=probes)
        task = single_task(circuit_breaker=breaker, on_error=policy, concurrency_limit=1)
        stream = task(service)(paced(len(failing), gap))
        results = await stream.collect()
        stats = stream.stats.stage("service")
        if policy == "emit":
            assert kinds(results) == expected
        else:
            assert results == [i for i, kind in enumerate(expected) if kind == "ok"]
            assert stats.skipped == len(failing) - len(results)
        assert stats.circuit_rejected == expected.count("open")

    run_on_virtual_clock(main(), errors)
    assert not errors


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    down=st.lists(st.tuples(st.integers(0, 30), st.integers(1, 15)), max_size=3),
    n=st.integers(1, 40),
    threshold=st.integers(1, 4),
    recovery=st.sampled_from([0.5, 2.0, 7.0]),
    probes=st.integers(1, 3),
    on_open=st.sampled_from(["fail", "wait"]),
    policy=st.sampled_from(["emit", "skip_item"]),
    retries=st.integers(1, 3),
    concurrency=st.sampled_from([1, 2, 5, None]),
    delays=st.lists(st.sampled_from([0.0, 0.3, 1.0]), min_size=1, max_size=5),
    timeout=st.sampled_from([None, 0.5]),
    batch=st.booleans(),
)
def test_no_item_is_lost_or_duplicated(
    down: list[tuple[int, int]],
    n: int,
    threshold: int,
    recovery: float,
    probes: int,
    on_open: str,
    policy: str,
    retries: int,
    concurrency: int | None,
    delays: list[float],
    timeout: float | None,
    batch: bool,
) -> None:
    """Random breakers, outages (time windows), policies, retries and timeouts: every
    input item is delivered, skipped or a Failure exactly once, and the statistics count
    each."""
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def is_down() -> bool:
            now = loop.time()
            return any(start <= now < start + length for start, length in down)

        async def call(x: Any) -> Any:
            await asyncio.sleep(delays[(x[0] if batch else x) % len(delays)])
            if is_down():
                raise Down("down")
            return x

        breaker = CircuitBreaker(threshold, recovery, probes, on_open=on_open)  # type: ignore[arg-type]
        options: dict[str, Any] = dict(
            circuit_breaker=breaker,
            on_error=policy,
            retry_attempts=retries,
            retry_delay=0.5,
            timeout=timeout,
            concurrency_limit=concurrency,
        )
        task = batch_task(max_size=2, **options)(call) if batch else single_task(**options)(call)
        stream = task(paced(n, 0.25))
        results = await stream.collect()
        delivered = [r for r in results if not isinstance(r, Failure)]
        failed = [r.item for r in results if isinstance(r, Failure)]
        out = delivered  # (a batch's list of results is several items)
        stats = stream.stats.stage("call")
        if policy == "emit":
            assert sorted(out + failed) == list(range(n))
            # (a batch task counts the calls given up on: a Failure for each of its items)
            assert (
                stats.emitted == len(failed) if not batch else bool(stats.emitted) == bool(failed)
            )
        else:
            assert failed == []
            assert len(set(out)) == len(out) and set(out) <= set(range(n))
            assert stats.skipped == n - len(out) or (
                batch and bool(stats.skipped) == (len(out) < n)
            )
        assert stats.items_in == n
        assert stats.circuit_rejected is not None and stats.circuit_opened is not None

    run_on_virtual_clock(main(), errors, real_timeout=20.0)
    assert not errors

"""DataFrames in and out: conveyor.sources and stream.collect_dataframe()."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

from conveyor import batch_task, single_task  # noqa: E402
from conveyor.sources import (  # noqa: E402
    dataframe_chunks,
    file_chunks,
    file_lines,
    files,
    read_csv_chunks,
    read_parquet_chunks,
)
from conveyor.sources._reading import READING_FIGURES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def numbers_frame(n: int) -> Any:
    return pd.DataFrame({"a": np.arange(n), "b": np.arange(n) * 0.5, "k": np.arange(n) % 3})


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.csv"
    numbers_frame(25).to_csv(path, index=False)
    return path


# -- dataframe_chunks ------------------------------------------------------------------------


async def test_dataframe_chunks_slices_with_a_short_last_chunk() -> None:
    frame = numbers_frame(10).set_index(pd.Index(list("abcdefghij")))
    source = dataframe_chunks(frame, rows=4)
    assert len(source) == 3
    chunks = list(source)
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert list(chunks[2].index) == ["i", "j"]  # the frame's own index
    assert [len(c) async for c in source] == [4, 4, 2]  # async for too, again
    assert source.figures() == {
        "items_read": 6,
        "bytes_read": None,  # in memory: no file read
        "bytes_total": None,
        "seconds_reading": 0.0,
        "mb_per_second": None,
        "progress": None,
        "rows_read": 20,
        "rows_total": 10,
    }
    assert source.chunks_read == 6
    assert len(dataframe_chunks(frame, rows=10)) == 1
    assert len(dataframe_chunks(frame.iloc[:0], rows=3)) == 0


# -- read_csv_chunks -------------------------------------------------------------------------


async def test_csv_chunks_have_the_asked_size_and_a_running_index(csv_file: Path) -> None:
    source = read_csv_chunks(csv_file, rows=10)
    chunks = [chunk async for chunk in source]
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert [c.index[0] for c in chunks] == [0, 10, 20]
    pd.testing.assert_frame_equal(pd.concat(chunks), numbers_frame(25))
    assert source.closed
    figures = source.figures()
    assert figures["items_read"] == 3 and figures["rows_read"] == 25
    assert figures["bytes_read"] == figures["bytes_total"] == csv_file.stat().st_size
    assert figures["seconds_reading"] > 0 and figures["progress"] == 1.0
    assert figures["rows_total"] is None


async def test_read_csv_kwargs_pass_through(csv_file: Path) -> None:
    source = read_csv_chunks(csv_file, rows=100, usecols=["a", "b"], dtype={"a": "float32"})
    (chunk,) = [c async for c in source]
    assert list(chunk.columns) == ["a", "b"]
    assert chunk["a"].dtype == np.float32


async def test_csv_is_parsed_off_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "slow.csv"
    numbers_frame(3).to_csv(path, index=False)
    parsed_on: list[str] = []

    def slow_int(text: str) -> int:  # a converter runs while the chunk is parsed
        parsed_on.append(threading.current_thread().name)
        time.sleep(0.1)
        return int(text)

    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beating = asyncio.create_task(heartbeat())
    try:
        frame = await single_task(lambda c: c)(
            read_csv_chunks(path, rows=10, converters={"a": slow_int})
        ).collect_dataframe()
    finally:
        beating.cancel()
    assert list(frame["a"]) == [0, 1, 2]
    assert parsed_on and all(name.startswith("conveyor-source") for name in parsed_on)
    # 0.3 s of parsing: a loop blocked by it would have ticked about once.
    assert ticks >= 8, ticks


async def test_a_read_error_reaches_the_consumer_and_closes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3,4\n5,6,7,8\n")
    source = read_csv_chunks(path, rows=1)
    with pytest.raises(pd.errors.ParserError) as caught:
        await single_task(lambda c: c)(source).collect()
    assert any("reading the pipeline's input" in note for note in caught.value.__notes__)
    assert source.closed and source._reader.handles.handle.closed


# -- leaving early ---------------------------------------------------------------------------


async def test_break_closes_the_file_and_ends_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    numbers_frame(1000).to_csv(path, index=False)
    threads = threading.active_count()
    source = read_csv_chunks(path, rows=10)
    async with single_task(lambda c: c)(source) as stream:
        async for _ in stream:
            break
    assert source.closed
    assert source._reader.handles.handle.closed
    assert source.chunks_read < 100  # the window held the reading back
    assert threading.active_count() == threads

    # A dropped stream (bare async for) closes it on the next loop iterations.
    source = read_csv_chunks(path, rows=10)
    async for _ in single_task(lambda c: c)(source):
        break
    for _ in range(500):  # the clean-up goes on in the background: a thread's round trip
        if source.closed:
            break
        await asyncio.sleep(0.01)
    assert source.closed and source._reader.handles.handle.closed
    assert threading.active_count() == threads


async def test_aclose_waits_for_the_read_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "slow.csv"
    numbers_frame(3).to_csv(path, index=False)
    events: list[str] = []

    def slow_int(text: str) -> int:
        time.sleep(0.05)
        events.append("parsed")
        return int(text)

    threads = threading.active_count()
    source = read_csv_chunks(path, rows=10, converters={"a": slow_int})
    reading = asyncio.ensure_future(anext(source))
    await asyncio.sleep(0.02)  # the read is under way on the thread
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await source.aclose()
    events.append("closed")
    assert events == ["parsed"] * 3 + ["closed"]
    assert source._reader.handles.handle.closed
    assert threading.active_count() == threads
    with pytest.raises(StopAsyncIteration):
        await anext(source)


# -- frames, series and arrays through tasks -------------------------------------------------


@single_task(executor="thread")
def add_total(chunk: Any) -> Any:
    return chunk.assign(total=chunk["a"] + chunk["b"])


@batch_task(max_size=2)
def pair_up(chunks: list[Any]) -> Any:
    assert all(isinstance(c, pd.DataFrame) for c in chunks)
    return pd.concat(chunks)


@single_task
def column_a(chunk: Any) -> Any:
    return chunk["a"]


@single_task
def as_array(series: Any) -> Any:
    return series.to_numpy()


async def test_frames_series_and_arrays_flow_through_single_and_batch_tasks() -> None:
    frame = numbers_frame(10)
    out = await (add_total | pair_up)(dataframe_chunks(frame, rows=3)).collect()
    assert [len(f) for f in out] == [6, 4]  # two chunks per batch
    pd.testing.assert_frame_equal(
        pd.concat(out), frame.assign(total=frame["a"] + frame["b"]), check_exact=True
    )
    series = await (add_total | column_a)(dataframe_chunks(frame, rows=4)).collect()
    assert all(isinstance(s, pd.Series) for s in series)
    arrays = await (column_a | as_array)(dataframe_chunks(frame, rows=4)).collect()
    assert [a.tolist() for a in arrays] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# -- collect_dataframe -----------------------------------------------------------------------


@single_task
async def jitter(chunk: Any) -> Any:
    await asyncio.sleep(random.uniform(0, 0.01))
    return chunk


async def test_collect_dataframe_keeps_the_order_and_the_index() -> None:
    frame = numbers_frame(200)
    out = await jitter(dataframe_chunks(frame, rows=7)).collect_dataframe()
    pd.testing.assert_frame_equal(out, frame)


async def test_collect_dataframe_of_each_kind() -> None:
    frame = numbers_frame(5)
    series = await column_a(dataframe_chunks(frame, rows=2)).collect_dataframe()
    pd.testing.assert_frame_equal(series, frame[["a"]])
    flat = await (column_a | as_array)(dataframe_chunks(frame, rows=2)).collect_dataframe()
    assert list(flat.columns) == [0] and flat[0].tolist() == [0, 1, 2, 3, 4]
    rows = await single_task(lambda c: c.to_numpy())(
        dataframe_chunks(frame[["a", "k"]], rows=2)
    ).collect_dataframe()
    assert rows.shape == (5, 2) and rows[1].tolist() == [0, 1, 2, 0, 1]
    records = await single_task(lambda x: {"x": x, "square": x * x})(range(4)).collect_dataframe()
    assert records.to_dict("list") == {"x": [0, 1, 2, 3], "square": [0, 1, 4, 9]}
    scalars = await single_task(lambda x: x * 2)(range(3)).collect_dataframe()
    assert scalars["value"].tolist() == [0, 2, 4]
    empty = await single_task(lambda x: x)([]).collect_dataframe()
    assert isinstance(empty, pd.DataFrame) and empty.empty


async def test_collect_dataframe_refuses_mixes_and_other_types() -> None:
    with pytest.raises(TypeError, match="result 0 is a mapping, result 1 a scalar"):
        await single_task(lambda x: {"x": x} if x == 0 else x)(range(2)).collect_dataframe()
    with pytest.raises(TypeError, match="cannot make rows of a tuple"):
        await single_task(lambda x: (x, x))(range(2)).collect_dataframe()


# -- the figures every source has -------------------------------------------------------------

COMMON = list(READING_FIGURES)


def made(kind: str, path: Path) -> Any:
    if kind == "file_chunks":
        return file_chunks(path, size=100)
    if kind == "file_lines":
        return file_lines(path, block=64)
    if kind == "read_csv_chunks":
        return read_csv_chunks(path, rows=7)
    if kind == "read_parquet_chunks":
        pytest.importorskip("pyarrow")
        numbers_frame(25).to_parquet(path.with_suffix(".parquet"), index=False)
        return read_parquet_chunks(path.with_suffix(".parquet"), rows=7)
    if kind == "files":
        return files(path.parent)
    return dataframe_chunks(numbers_frame(25), rows=7)


@pytest.mark.parametrize(
    "kind",
    [
        "file_chunks",
        "file_lines",
        "read_csv_chunks",
        "read_parquet_chunks",
        "files",
        "dataframe_chunks",
    ],
)
async def test_every_source_has_the_common_figures_at_the_end(csv_file: Path, kind: str) -> None:
    source = made(kind, csv_file)
    items = [item async for item in source]
    figures = source.figures()
    assert list(figures)[: len(COMMON)] == COMMON
    json.dumps(figures)  # plain values only
    assert figures["items_read"] == len(items) > 0
    assert figures["seconds_reading"] >= 0.0
    if kind in ("files", "dataframe_chunks"):  # no file read: no bytes, no progress
        assert figures["bytes_read"] is figures["bytes_total"] is None
        assert figures["mb_per_second"] is figures["progress"] is None
    else:  # a file read to its end
        size = source.path.stat().st_size
        assert figures["bytes_read"] == figures["bytes_total"] == size
        assert figures["progress"] == 1.0
        assert figures["seconds_reading"] > 0
        speed = size / figures["seconds_reading"] / 1e6
        assert figures["mb_per_second"] == pytest.approx(speed)
        assert source.closed
    if kind in ("read_csv_chunks", "read_parquet_chunks", "dataframe_chunks"):
        assert figures["rows_read"] == 25 and figures["items_read"] == 4
        assert figures["rows_total"] == (None if kind == "read_csv_chunks" else 25)
    if kind == "files":
        assert figures["files_read"] == len(items)


async def test_a_compressed_csv_tells_its_bytes_only_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "numbers.csv.gz"
    numbers_frame(25).to_csv(path, index=False)
    source = read_csv_chunks(path, rows=10)
    await anext(source)
    during = source.figures()
    assert during["bytes_read"] is None and during["progress"] is None
    assert during["bytes_total"] == path.stat().st_size
    assert len([c async for c in source]) == 2
    after = source.figures()
    assert after["bytes_read"] == after["bytes_total"] and after["progress"] == 1.0
    await source.aclose()


# -- arguments -------------------------------------------------------------------------------


def test_bad_arguments_are_refused_at_call_time(csv_file: Path, tmp_path: Path) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="rows must be >= 1"):
            read_csv_chunks(csv_file, rows=bad)
    for wrong in ("10", 2.5, True, None):
        with pytest.raises(TypeError, match="rows must be an int"):
            dataframe_chunks(numbers_frame(3), rows=wrong)  # type: ignore[arg-type]
    missing = tmp_path / "missing.csv"
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        read_csv_chunks(missing)
    with pytest.raises(FileNotFoundError, match="is a directory"):
        read_parquet_chunks(tmp_path)
    with pytest.raises(TypeError, match="path must be a str"):
        read_csv_chunks(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="give rows=N instead"):
        read_csv_chunks(csv_file, chunksize=10)
    with pytest.raises(TypeError, match="frame must be a pandas DataFrame"):
        dataframe_chunks([1, 2, 3], rows=2)
    with pytest.raises(TypeError, match="columns must be a list"):
        read_parquet_chunks(csv_file, columns="a")


def test_pandas_is_not_imported_with_conveyor() -> None:
    code = "import sys, conveyor, conveyor.sources; assert 'pandas' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


# -- Parquet ---------------------------------------------------------------------------------


async def test_parquet_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    frame = numbers_frame(25)
    path = tmp_path / "numbers.parquet"
    frame.to_parquet(path, row_group_size=12, index=False)
    source = read_parquet_chunks(path, rows=5, columns=["a", "k"])
    out = await jitter(source).collect_dataframe()
    pd.testing.assert_frame_equal(out, frame[["a", "k"]])  # a running RangeIndex
    # 5 chunks of 5 rows; older pyarrow versions also cut at the row groups' ends (12 + 12 + 1
    # rows): 7 chunks.
    assert source.chunks_read in (5, 7) and source.rows_total == 25 and source.closed


def test_parquet_without_pyarrow_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install 'conveyor\[parquet\]'"):
        read_parquet_chunks(path)


# -- memory: flat in the file's size ---------------------------------------------------------


def write_csv(path: Path, millions: int, block: str) -> None:
    with path.open("w") as f:
        f.write("id,a,b,c\n")
        for _ in range(millions):
            f.write(block)  # the same million rows again: parsing costs the same


def peak_growth(path: Path) -> dict[str, Any]:
    child = Path(__file__).with_name("frames_memory.py")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(child), str(path)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")
def test_peak_memory_is_flat_in_the_file_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 1_000_000
    block = pd.DataFrame(
        {
            "id": np.arange(n),
            "a": rng.integers(0, 1000, n),
            "b": rng.integers(0, 100_000, n),
            "c": rng.integers(0, 10, n),
        }
    ).to_csv(header=False, index=False)
    small, large = tmp_path / "1M.csv", tmp_path / "5M.csv"
    write_csv(small, 1, block)
    write_csv(large, 5, block)
    del block
    at_1m, at_5m = peak_growth(small), peak_growth(large)
    assert at_1m["rows"] == 1_000_000 and at_5m["rows"] == 5_000_000
    assert at_5m["big"] == 5 * at_1m["big"]
    mib = 2**20
    report = f"peak RSS growth {at_1m['peak_growth'] / mib:.0f} MiB at 1M rows, "
    report += f"{at_5m['peak_growth'] / mib:.0f} MiB at 5M rows"
    print(report)
    # Five times the file (~95 MB), about the same peak: a few chunks of 100k rows.
    assert at_5m["peak_growth"] < 1.3 * at_1m["peak_growth"] + 50 * mib, report
    # The 5M rows as one frame would take 160 MB (4 int64 columns): far from that.
    assert at_5m["peak_growth"] < 80 * mib, report

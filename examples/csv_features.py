"""Chunked feature engineering over a CSV file, in bounded memory.

* ``read_csv_chunks`` reads the file 20,000 rows at a time, on a thread of its own: the
  event loop never waits for the disk or the parser.
* ``add_features`` computes derived columns on a thread pool (``executor="thread"``),
  several chunks at once; ``summarise`` reduces each chunk to one row per group.
* ``collect_dataframe()`` concatenates the results in input order.
* The window is 4 items -- here 4 chunks -- so the reader never runs further ahead than
  that, however big the file. (The default window counts 1000 items, which would be
  1000 chunks; a byte-bounded window will make this setting unnecessary.)
"""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import conveyor
from conveyor import batch_task, single_task
from conveyor.sources import read_csv_chunks

ROWS = 200_000
CHUNK_ROWS = 20_000


def write_sales(path: Path) -> pd.DataFrame:
    """A CSV of made-up sales; returns the frame, to check the results against."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "store": rng.integers(0, 5, ROWS),
            "units": rng.integers(1, 20, ROWS),
            "price": rng.uniform(1.0, 50.0, ROWS).round(2),
        }
    )
    frame.to_csv(path, index=False)
    return frame


@single_task(executor="thread")
def add_features(chunk: pd.DataFrame) -> pd.DataFrame:
    """Derived columns (vectorised pandas: it releases the GIL for much of the work)."""
    return chunk.assign(
        revenue=chunk["units"] * chunk["price"],
        bulk=chunk["units"] >= 10,
    )


@batch_task(max_size=1)
def summarise(chunks: list[pd.DataFrame]) -> pd.DataFrame:
    """One chunk down to one row per store."""
    (chunk,) = chunks
    return chunk.groupby("store").agg(
        rows=("units", "size"), revenue=("revenue", "sum"), bulk=("bulk", "sum")
    )


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sales.csv"
        frame = write_sales(path)

        source = read_csv_chunks(path, rows=CHUNK_ROWS, dtype={"store": "int8"})
        pipeline = add_features | summarise  # (a few chunks in flight: the byte bound)
        per_chunk = await pipeline(source).collect_dataframe()
        totals = per_chunk.groupby(level="store").sum()

    print(
        f"{source.chunks_read} chunks, {source.rows_read} rows read in "
        f"{source.seconds_reading:.2f} s of reading (on the source's thread)"
    )
    print(totals)

    # 10 chunks, 5 stores each; the sums match the whole frame's.
    assert len(per_chunk) == (ROWS // CHUNK_ROWS) * 5
    assert source.closed and source.rows_read == ROWS
    assert source.bytes_read == source.bytes_total
    expected = frame.assign(revenue=frame["units"] * frame["price"]).groupby("store")
    assert totals["rows"].tolist() == expected.size().tolist()
    assert np.allclose(totals["revenue"], expected["revenue"].sum())


if __name__ == "__main__":
    conveyor.run(main())

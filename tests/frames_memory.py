"""Child process of tests/test_frames.py's memory test: ``python frames_memory.py CSV``.

Streams the CSV through chunked feature engineering -- ``read_csv_chunks`` -> derived
columns on a thread -> each chunk reduced to a per-group summary -- and prints one JSON
line: the rows seen, the summed summary, and the peak RSS growth of this process over
its RSS before the run (after pandas and conveyor were imported and warmed up). A fresh
process per file keeps the peak this run's alone. Linux only (it reads /proc).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import conveyor
from conveyor import batch_task, single_task
from conveyor.sources import read_csv_chunks

CHUNK_ROWS = 100_000
# The window's byte bound (max_in_flight_bytes, 64 MiB by default) limits how many
# chunks the reader runs ahead; tightened here so that both file sizes hold the same few
# chunks (at the default, the 1M-row file would fit whole in the window: not flat).
MAX_IN_FLIGHT_BYTES = 16 << 20


@single_task(executor="thread")
def add_features(chunk: pd.DataFrame) -> pd.DataFrame:
    """Derived columns, computed per chunk (vectorised, so it releases the GIL often)."""
    return chunk.assign(
        ratio=chunk["a"] / (chunk["b"] + 1),
        log_b=np.log1p(chunk["b"]),
        big=chunk["b"] > 50_000,
    )


@batch_task(max_size=1)
def summarise(chunks: list[pd.DataFrame]) -> pd.DataFrame:
    """Each chunk down to a few rows: per group ``c``, counts and sums."""
    return (
        pd.concat(chunks)
        .groupby("c")
        .agg(
            rows=("id", "size"), ratio=("ratio", "sum"), log_b=("log_b", "sum"), big=("big", "sum")
        )
    )


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak read after the run is
    the run's, not the imports'. False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak RSS: VmHWM on Linux (ru_maxrss elsewhere, in bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Sampler(threading.Thread):
    """RSS sampled every few milliseconds: the peak, where VmHWM cannot be reset."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = current_rss()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, current_rss())


async def run(path: Path) -> pd.DataFrame:
    pipeline = (add_features | summarise).with_context(max_in_flight_bytes=MAX_IN_FLIGHT_BYTES)
    summaries = await pipeline(read_csv_chunks(path, rows=CHUNK_ROWS)).collect_dataframe()
    return summaries.groupby(level=0).sum()


def main() -> dict[str, Any]:
    path = Path(sys.argv[1])
    warm = path.with_name("warm-up.csv")  # imports, code paths and allocator pools
    pd.DataFrame({"id": [0, 1], "a": [1, 2], "b": [3, 4], "c": [0, 1]}).to_csv(warm, index=False)
    conveyor.run(run(warm))
    before = current_rss()
    reset = reset_peak_rss()
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    totals = conveyor.run(run(path))
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    peak = max(sampler.peak, peak_rss()) if reset else sampler.peak
    return {
        "rows": int(totals["rows"].sum()),
        "big": int(totals["big"].sum()),
        "seconds": seconds,
        "rss_before": before,
        "peak_growth": max(0, peak - before),
        "hwm_reset": reset,
    }


if __name__ == "__main__":
    print(json.dumps(main()))

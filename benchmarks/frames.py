"""The ``csv`` scenario: chunked feature engineering over a CSV file, conveyor vs pandas.

The same work four ways, each in a fresh process (``python -m benchmarks.frames VARIANT
PATH``), which prints one JSON line with its seconds and its peak RSS growth over the RSS
before the work (after imports and a warm-up on a tiny file):

- ``conveyor inline`` / ``conveyor thread``: ``read_csv_chunks(path, rows=CHUNK)`` ->
  ``add_features`` (on the loop / ``executor="thread"``) -> ``summarise`` each chunk to
  one row per group -> ``collect_dataframe()``, with a window of 4 chunks;
- ``pandas chunks``: a plain ``for chunk in pd.read_csv(path, chunksize=CHUNK)`` loop
  doing the same per chunk -- the floor conveyor is compared with;
- ``pandas whole file``: ``pd.read_csv(path)``, then the same work on the whole frame.

The peak is VmHWM after resetting it (``/proc/self/clear_refs``), or RSS sampled every
5 ms where that is not allowed. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .common import Config, Row, fmt_int, fmt_mb, fmt_rate, run_on

CHUNK = 100_000
VARIANTS = ("conveyor inline", "conveyor thread", "pandas chunks", "pandas whole file")


# -- the work ---------------------------------------------------------------------------------


def add_features(chunk: Any) -> Any:
    import numpy as np

    return chunk.assign(
        ratio=chunk["a"] / (chunk["b"] + 1), log_b=np.log1p(chunk["b"]), big=chunk["b"] > 50_000
    )


def summarise(chunk: Any) -> Any:
    return chunk.groupby("c").agg(
        rows=("id", "size"), ratio=("ratio", "sum"), log_b=("log_b", "sum"), big=("big", "sum")
    )


async def conveyor_run(path: Path, executor: str) -> Any:
    from conveyor import single_task
    from conveyor.sources import read_csv_chunks

    features = single_task(add_features, executor=executor)
    summary = single_task(summarise)
    pipeline = features | summary  # (the default byte bound: a few chunks in flight)
    return await pipeline(read_csv_chunks(path, rows=CHUNK)).collect_dataframe()


def run_variant(variant: str, path: Path, loop: str) -> Any:
    import pandas as pd

    if variant.startswith("conveyor"):
        executor = variant.split()[1]
        summaries = run_on(loop, conveyor_run(path, executor))
    elif variant == "pandas chunks":
        parts = [summarise(add_features(c)) for c in pd.read_csv(path, chunksize=CHUNK)]
        summaries = pd.concat(parts)
    else:
        summaries = summarise(add_features(pd.read_csv(path)))
    return summaries.groupby(level=0).sum()


# -- the child process ------------------------------------------------------------------------


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def high_water_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(variant: str, path: Path, loop: str) -> dict[str, Any]:
    warm = path.with_name(f"warm-{os.getpid()}.csv")
    warm.write_text("id,a,b,c\n0,1,2,3\n1,2,3,4\n")
    run_variant(variant, warm, loop)  # imports, code paths, allocator pools
    warm.unlink()
    before = current_rss()
    reset = reset_high_water()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, current_rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    totals = run_variant(variant, path, loop)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if reset:
        peak = max(peak, high_water_rss())
    return {"rows": int(totals["rows"].sum()), "seconds": seconds, "growth": peak - before}


def _child(variant: str, path: Path, loop: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.frames", variant, str(path), "--loop", loop]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- the scenario -----------------------------------------------------------------------------


def write_csv(path: Path, millions: int) -> None:
    """``millions`` times the same million rows of four integer columns (~19 MB each)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 1_000_000
    columns = {"id": np.arange(n), "a": rng.integers(0, 1000, n)}
    columns |= {"b": rng.integers(0, 100_000, n), "c": rng.integers(0, 10, n)}
    block = pd.DataFrame(columns).to_csv(header=False, index=False)
    with path.open("w") as f:
        f.write("id,a,b,c\n")
        for _ in range(millions):
            f.write(block)


def csv(loop: str, cfg: Config) -> list[Row]:
    millions = 1 if cfg.quick else 5
    rows = millions * 1_000_000
    reps = 1 if cfg.quick else 3
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.csv"
        write_csv(path, millions)
        size = path.stat().st_size
        for rep in range(reps):
            for variant in VARIANTS if rep % 2 == 0 else reversed(VARIANTS):
                result = _child(variant, path, loop)
                if result["rows"] != rows:
                    raise AssertionError(f"{variant} summarised {result['rows']} rows of {rows}")
                samples[variant].append(result)

    def rate(variant: str) -> float:
        return rows / statistics.median(s["seconds"] for s in samples[variant])

    def growth(variant: str) -> float:
        return float(statistics.median(s["growth"] for s in samples[variant]))

    def show(variant: str) -> str:
        return f"{fmt_rate(rate(variant))} rows, peak +{fmt_mb(growth(variant))}"

    floor = f"pandas chunks: {show('pandas chunks')}; whole file: {show('pandas whole file')}"
    out = []
    for variant in ("conveyor inline", "conveyor thread"):
        speed = rate(variant) / rate("pandas chunks")
        extra = growth(variant) - growth("pandas chunks")
        out.append(
            Row(
                scenario=f"csv {fmt_int(rows)} rows ({variant.split()[1]})",
                loop=loop,
                metric="rows/s, peak RSS growth: read in chunks of 100k, features, summary",
                conveyor=show(variant),
                floor=floor,
                ratio=f"{speed:.2f}x the loop's rate, {extra / 2**20:+.0f} MB",
                target=">=0.8x the loop's rate, <=+50 MB",
                met=speed >= 0.8 and extra <= 50 * 2**20,
                note=f"file {fmt_mb(size)}; the default byte bound (64 MiB); median of {reps}",
                group="csv",
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frames")
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("path", type=Path)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    print(json.dumps(measure(args.variant, args.path, args.loop)))


if __name__ == "__main__":
    main()

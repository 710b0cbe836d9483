"""Latencies in a histogram of bounded size (the statistics' call latency)."""

from __future__ import annotations

import math


class Histogram:
    """Latencies in log-spaced buckets, :data:`PER_OCTAVE` to a doubling: quantiles within
    ±9%, in at most ~200 buckets whatever the number of samples; max and mean exact."""

    PER_OCTAVE = 4
    FLOOR = 24  # 2**-24 s (60 ns): the first bucket

    __slots__ = ("buckets", "count", "max", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        index = 0 if seconds <= 0 else max(0, int((math.log2(seconds) + self.FLOOR) * 4))
        self.buckets[index] = self.buckets.get(index, 0) + 1

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0-1): the middle of its bucket, never above the max."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                middle = 2 ** ((index + 0.5) / self.PER_OCTAVE - self.FLOOR)
                return min(middle, self.max)
        return self.max

    def bucket_counts(self) -> list[tuple[float, int]]:
        """Each non-empty bucket as ``(upper bound in seconds, calls)``, by bound, not
        cumulative: a call counted there took at least 2**-0.25 (0.84) of that bound, and
        less than it (the first bucket also holds everything shorter)."""
        return [
            (2 ** ((index + 1) / self.PER_OCTAVE - self.FLOOR), count)
            for index, count in sorted(self.buckets.items())
        ]

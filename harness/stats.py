"""The arithmetic of the reports: percentiles, order violations, inversions."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linearly interpolated; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def key_violations(handled: Iterable[tuple[Hashable, int]]) -> int:
    """How many messages were handled after a later message of the same key:
    `handled` is (ordering key, publish sequence) in the order they were handled."""
    latest: dict[Hashable, int] = {}
    violations = 0
    for key, seq in handled:
        if seq < latest.get(key, -1):
            violations += 1
        else:
            latest[key] = seq
    return violations


def inversions(sequence: Sequence[int]) -> int:
    """Pairs handled in the opposite order to the one they were published in."""

    def sort_count(xs: list[int]) -> tuple[list[int], int]:
        if len(xs) < 2:
            return xs, 0
        mid = len(xs) // 2
        left, a = sort_count(xs[:mid])
        right, b = sort_count(xs[mid:])
        merged, count, i, j = [], a + b, 0, 0
        while i < len(left) and j < len(right):
            if left[i] <= right[j]:
                merged.append(left[i])
                i += 1
            else:
                merged.append(right[j])
                count += len(left) - i
                j += 1
        return merged + left[i:] + right[j:], count

    return sort_count(list(sequence))[1]


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 / max, for a table cell or a JSON field."""
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }

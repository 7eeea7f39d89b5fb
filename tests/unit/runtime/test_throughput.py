"""Steady-state throughput from per-batch times, checked against hand-computed intervals."""

from __future__ import annotations

import pytest

from neuromem.runtime.throughput import BatchTime, stage_totals, steady_state


def batches(worker: str, start: float, duration: float, n: int, rows: int = 10):
    return [BatchTime(worker, start + k * duration, start + (k + 1) * duration, rows,
                      {"model": duration}) for k in range(n)]


def test_one_worker_at_a_constant_rate_gives_that_rate():
    result = steady_state(batches("a", 100.0, 0.5, 20))  # 10 rows per 0.5 s
    assert result.rows_per_s == pytest.approx(20.0)
    assert (result.start, result.end, result.n_batches) == (100.0, 110.0, 20)


def test_the_interval_is_where_every_worker_is_busy():
    # worker b starts 3 s late (start-up) and a finishes 2 s before b (drain)
    a = batches("a", 0.0, 1.0, 10, rows=4)          # 0..10 s, 4 rows/s
    b = batches("b", 3.0, 1.0, 9, rows=2)           # 3..12 s, 2 rows/s
    result = steady_state(a + b)
    assert (result.start, result.end) == (3.0, 10.0)
    assert result.rows_per_s == pytest.approx(6.0)  # both rates together, start-up excluded
    assert result.n_workers == 2 and result.n_batches == 7 + 7


def test_a_batch_straddling_the_interval_counts_pro_rata():
    a = [BatchTime("a", 0.0, 2.0, 20, {})] + batches("a", 2.0, 1.0, 8, rows=10)
    b = batches("b", 1.0, 1.0, 9, rows=10)
    result = steady_state(a + b, min_batches=1)
    assert (result.start, result.end) == (1.0, 10.0)
    # a: half of its first batch (10 rows) + 8 × 10; b: 9 × 10 → 180 rows in 9 s
    assert result.rows_per_s == pytest.approx(180 / 9)


def test_too_few_batches_give_no_figure_and_say_why():
    result = steady_state(batches("a", 0.0, 1.0, 4))
    assert result.rows_per_s is None and "fewer than 5" in result.reason
    assert steady_state([]).reason == "no batches"
    # one part written by two actors at once: no interval where both are busy for long
    overlap = batches("a", 0.0, 1.0, 1) + batches("b", 0.5, 1.0, 1)
    assert steady_state(overlap).rows_per_s is None


def test_stage_totals_sum_over_workers():
    assert stage_totals(batches("a", 0, 0.5, 4) + batches("b", 0, 0.25, 4)) == {"model": 3.0}

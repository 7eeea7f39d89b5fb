"""Throughput from per-batch start/end times: end to end, and steady state while all workers run.

Jobs and benchmarks record one :class:`BatchTime` per batch a worker processed (a Ray actor, or
the single worker of a plain loop). The *steady-state* rate counts the rows processed inside the interval where every worker is busy —
from the moment the last worker starts its first batch to the moment the first worker ends its
last batch; a batch straddling an end counts pro rata — divided by that interval's length. Start-up (process start, imports, model build, warm-up) and the drain at the
end fall outside it, so the figure compares a Ray pipeline with a bare loop fairly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

#: Fewest whole batches inside the steady interval for a steady-state figure to be reported.
MIN_STEADY_BATCHES = 5


@dataclass(frozen=True)
class BatchTime:
    """One batch processed by one worker.

    Attributes
    ----------
    worker : str
        Worker identity (host and process id of a Ray actor, ``"loop"`` for a plain loop).
    start, end : float
        Wall-clock times (``time.time()``, s) when the worker began and finished the batch.
    rows : int
        Rows (images) in the batch, failed ones included.
    stages : dict
        Seconds spent per stage within the batch (``decode``, ``model``, ``write`` ...).
    """

    worker: str
    start: float
    end: float
    rows: int
    stages: dict[str, float]

    def to_dict(self) -> dict:
        """JSON-able dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class SteadyState:
    """Steady-state throughput (see the module docstring).

    Attributes
    ----------
    rows_per_s : float or None
        Rows per second over the interval; None when fewer than ``min_batches`` batches fall
        inside it (the run was too short to have a steady state).
    start, end : float or None
        The interval (wall clock, s).
    n_batches : int
        Batches wholly inside the interval.
    n_workers : int
        Workers that processed batches.
    reason : str or None
        Why no figure was computed.
    """

    rows_per_s: float | None
    start: float | None
    end: float | None
    n_batches: int
    n_workers: int
    reason: str | None = None

    def to_dict(self) -> dict:
        """JSON-able dictionary, with the interval length in ``interval_s``."""
        record = asdict(self)
        record["interval_s"] = (None if self.start is None or self.end is None
                                else self.end - self.start)
        return record


def steady_state(batches: Iterable[BatchTime], *,
                 min_batches: int = MIN_STEADY_BATCHES) -> SteadyState:
    """Rows per second while every worker is busy (see the module docstring).

    Parameters
    ----------
    batches : iterable of BatchTime
        Every batch of the run.
    min_batches : int
        Fewest batches inside the interval for a figure to be given.

    Returns
    -------
    SteadyState
    """
    batches = list(batches)
    by_worker: dict[str, list[BatchTime]] = {}
    for batch in batches:
        by_worker.setdefault(batch.worker, []).append(batch)
    if not by_worker:
        return SteadyState(None, None, None, 0, 0, reason="no batches")
    start = max(min(b.start for b in group) for group in by_worker.values())
    end = min(max(b.end for b in group) for group in by_worker.values())
    inside = [b for b in batches if b.start >= start and b.end <= end]
    if end <= start or len(inside) < min_batches:
        return SteadyState(None, start, end, len(inside), len(by_worker),
                           reason=f"{len(inside)} batch(es) inside the steady interval, "
                                  f"fewer than {min_batches}: run more images")
    rows = sum(b.rows * _overlap(b, start, end) for b in batches)
    return SteadyState(rows / (end - start), start, end, len(inside), len(by_worker))


def _overlap(batch: BatchTime, start: float, end: float) -> float:
    """Share of the batch's duration inside ``[start, end]`` (its rows are counted pro rata)."""
    duration = batch.end - batch.start
    if duration <= 0:
        return float(start <= batch.start <= end)
    return max(0.0, min(batch.end, end) - max(batch.start, start)) / duration


def stage_totals(batches: Sequence[BatchTime]) -> dict[str, float]:
    """Seconds per stage summed over all batches and workers."""
    totals: dict[str, float] = {}
    for batch in batches:
        for name, value in batch.stages.items():
            totals[name] = totals.get(name, 0.0) + value
    return totals

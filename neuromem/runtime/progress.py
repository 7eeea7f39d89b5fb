"""Progress bars and stage timing, one look for every command.

Every command that can run longer than ~10 s shows a bar with its rate and ETA on stderr
(:func:`progress_bar`) and ends its summary with where the time went (:class:`StageTimer`).
``--no-progress`` turns the bars off.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(total: float | None = None, *, desc: str, unit: str = "it",
                 enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on stderr with rate and ETA (``with progress_bar(...) as bar: bar.update()``).

    Parameters
    ----------
    total : float or None
        Expected number of units (None: no ETA).
    desc : str
        What is being done (``"scoring"``, ``"bootstrap"``).
    unit : str
        Name of one unit (``"img"``, ``"step"``).
    enabled : bool
        False draws nothing (``--no-progress``).
    """
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                smoothing=0.1, mininterval=0.5, dynamic_ncols=True, **options)


def track(items: Iterable[T], *, desc: str, total: float | None = None, unit: str = "it",
          enabled: bool = True) -> Iterator[T]:
    """Iterate over ``items`` with a :func:`progress_bar`."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total, desc=desc, unit=unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update(1)


class StageTimer:
    """Wall time of a command's stages, for its summary (``where the time went``).

    Examples
    --------
    >>> timer = StageTimer()
    >>> with timer.stage("read"):
    ...     pass
    >>> sorted(timer.seconds)
    ['read']
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block and add it to stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    @property
    def total_s(self) -> float:
        """Seconds since the timer was made."""
        return time.perf_counter() - self._start

    def format(self) -> str:
        """``where the time went: read 1.2 s, bootstrap 30.1 s, ... (total 33.0 s)``."""
        parts = ", ".join(f"{name} {value:.1f} s" for name, value in self.seconds.items())
        return f"where the time went: {parts or 'nothing timed'} (total {self.total_s:.1f} s)"

    def to_dict(self) -> dict[str, float]:
        """``{stage: seconds}`` plus ``total``."""
        return {**{name: round(value, 3) for name, value in self.seconds.items()},
                "total": round(self.total_s, 3)}

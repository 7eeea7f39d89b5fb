"""Progress of work done inside Ray tasks and workers, relayed to the driver's bar.

A task's or worker's progress (a step, one ROI fitted) reaches the driver only when it returns;
for bars that move while long tasks run, the driver makes a :class:`ProgressRelay` actor, hands
it to the tasks, which call ``relay.advance.remote(n)`` (fire and forget), and reads it with
``relay.read.remote()`` while it waits.
"""

from __future__ import annotations

from typing import Any


class ProgressRelay:
    """Actor holding the units done and the latest postfix (``ray.remote(num_cpus=0)(...)``)."""

    def __init__(self) -> None:
        self.done = 0
        self.postfix: dict[str, Any] = {}
        self.starts = 0

    def start(self, done: int = 0) -> None:
        """A loop (re)started with ``done`` units behind it (0, or a checkpoint's step)."""
        self.done = max(self.done, done)
        self.starts += 1

    def advance(self, n: int = 1, postfix: dict[str, Any] | None = None) -> None:
        """``n`` more units done; ``postfix`` (e.g. ``{"loss": 0.3}``) is shown by the bar."""
        self.done += n
        self.postfix.update(postfix or {})

    def reach(self, done: int, postfix: dict[str, Any] | None = None) -> None:
        """``done`` units in all (a restarted worker that repeats no unit reports its total)."""
        self.done = max(self.done, done)
        self.postfix.update(postfix or {})

    def read(self) -> tuple[int, dict[str, Any], int]:
        """Units done so far, the latest postfix, and how often a loop started."""
        return self.done, self.postfix, self.starts


def start_relay():
    """A :class:`ProgressRelay` actor (call inside a Ray session)."""
    import ray

    return ray.remote(num_cpus=0)(ProgressRelay).remote()

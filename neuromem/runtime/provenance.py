"""What every output records about how it was made: versions, command line, time, settings."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import shlex
import sys
from collections.abc import Iterable, Sequence

#: Packages whose versions every output records (others are added per job).
CORE_PACKAGES = ("neuromem", "numpy", "scipy", "pandas", "pyarrow", "torch")


def versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Python and package versions, ``{name: version}`` (``"not installed"`` when absent).

    Parameters
    ----------
    extra : iterable of str
        Distribution names to record besides :data:`CORE_PACKAGES` (``"ray"``, ``"diffusers"``).
    """
    found = {"python": platform.python_version()}
    for name in (*CORE_PACKAGES, *extra):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command line as one shell-quoted string (``sys.argv`` when not given)."""
    return shlex.join(str(part) for part in (sys.argv if argv is None else argv))


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-12-02T18:00:00+00:00``)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")

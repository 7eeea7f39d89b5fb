"""neuromem: why images are memorable, read off a computational model of visual cortex."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neuromem")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


def read_vertices(*args, **kwargs):
    """Read a score table's ``vertices`` column as a ``(N, 20484)`` array.

    See :func:`neuromem.scoring.table.read_vertices` for the parameters.
    """
    from neuromem.scoring.table import read_vertices as _read_vertices

    return _read_vertices(*args, **kwargs)


__all__ = ["__version__", "read_vertices"]

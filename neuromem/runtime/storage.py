"""The one storage layer: files and Parquet parts at local paths or any pyarrow filesystem URI.

Every reader and writer of neuromem goes through these functions, so every command that reads or
writes a table takes ``s3://``, ``gs://``, ``file://`` (any URI :meth:`pyarrow.fs.FileSystem.from_uri`
knows) as well as a local path.

Writes are atomic: a file is written under a hidden temporary name (``.tmp-...``) in its folder
and renamed once complete, so a reader (and a resumed job) sees the whole file or nothing;
pyarrow and pandas skip names that start with ``.`` or ``_`` when reading a folder.

A *parts folder* (:class:`PartWriter`) is how jobs write tables: each batch of rows is one Parquet
file ``part-<digest>.parquet`` whose digest is a hash of the rows' keys, so a batch that Ray
retries after a worker died rewrites the same file instead of adding its rows twice. Failed
inputs go to the ``_errors/`` sub-folder in the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from neuromem.errors import InputError

TEMP_PREFIX = ".tmp-"
"""Prefix of files being written (hidden from readers)."""

ERRORS_DIR = "_errors"
"""Sub-folder of a parts folder holding the failed inputs (``_`` so pandas and pyarrow skip it)."""

PART_PREFIX = "part-"
"""Prefix of every Parquet part a :class:`PartWriter` writes."""

# ----------------------------------------------------------------------------------------------
# paths and URIs


def is_uri(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a URI (``scheme://...``) rather than a local path."""
    return "://" in os.fspath(location)


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path of a local path or a URI (``s3://bucket/key``, ``file:///x``).

    Local paths get a memory-mapping :class:`pyarrow.fs.LocalFileSystem` (no copy on read) and
    are made absolute (``~`` expanded).

    Raises
    ------
    InputError
        When the URI's scheme is unknown or its filesystem cannot be reached.
    """
    text = os.fspath(location)
    if is_uri(text):
        try:
            return pafs.FileSystem.from_uri(text)
        except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"cannot open {text!r}: {error}") from None
    return pafs.LocalFileSystem(use_mmap=True), str(Path(text).expanduser().absolute())


def join_uri(root: str | os.PathLike, *parts: str) -> str:
    """Join a root (local path or URI) and ``/``-separated parts; local roots become absolute."""
    text = os.fspath(root)
    base = text.rstrip("/") if is_uri(text) else str(Path(text).expanduser().absolute())
    return "/".join([base, *(p.strip("/") for p in parts if p)])


def display(location: str | os.PathLike) -> str:
    """A location as users typed it (local paths as given, URIs unchanged)."""
    return os.fspath(location)


# ----------------------------------------------------------------------------------------------
# reading


def read_bytes(location: str | os.PathLike) -> bytes:
    """All bytes of a file (local path or URI); a missing file raises :class:`InputError`."""
    filesystem, path = resolve(location)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise InputError(f"file not found: {display(location)}") from None
    except OSError as error:  # pyarrow reports folders and permissions as OSError
        if filesystem.get_file_info(path).type == pafs.FileType.Directory:
            raise InputError(f"{display(location)} is a folder, not a file") from None
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise InputError(f"cannot read {display(location)}: {reason}") from None


def read_text(location: str | os.PathLike) -> str:
    """A UTF-8 text file (local path or URI)."""
    return read_bytes(location).decode("utf-8")


def read_json(location: str | os.PathLike) -> Any:
    """A JSON file (local path or URI); a file that is not JSON raises :class:`InputError`."""
    try:
        return json.loads(read_text(location))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{display(location)} is not a JSON file: {error}") from None


def exists(location: str | os.PathLike) -> bool:
    """Whether a file or folder exists (local path or URI)."""
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(location: str | os.PathLike) -> bool:
    """Whether ``location`` is an existing folder (local path or URI)."""
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).type == pafs.FileType.Directory


def list_files(root: str | os.PathLike, extensions: tuple[str, ...] = (),
               *, recursive: bool = True) -> list[str]:
    """Paths relative to ``root`` (``/``-separated, sorted) of its files with these extensions.

    Extensions are compared case-insensitively (give them lower-case, with the dot); an empty
    tuple lists every file.

    Raises
    ------
    InputError
        When ``root`` is not a folder.
    """
    filesystem, base = resolve(root)
    if filesystem.get_file_info(base).type != pafs.FileType.Directory:
        raise InputError(f"{display(root)} is not a folder")
    selector = pafs.FileSelector(base, recursive=recursive)
    return sorted(
        entry.path[len(base):].lstrip("/")
        for entry in filesystem.get_file_info(selector)
        if entry.type == pafs.FileType.File
        and (not extensions or entry.path.lower().endswith(extensions))
    )


# ----------------------------------------------------------------------------------------------
# writing


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, paths and tuples made JSON types, NaN/inf as None.

    JSON has no NaN: a statistic that could not be computed is written as ``null``.
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def dumps_json(value: Any, *, indent: int | None = 1) -> str:
    """JSON text of ``value`` through :func:`to_jsonable` (never ``NaN`` in the output)."""
    return json.dumps(to_jsonable(value), indent=indent, allow_nan=False, sort_keys=False)


def make_dirs(location: str | os.PathLike) -> None:
    """Create a folder and its parents (no error when it exists).

    Raises
    ------
    InputError
        When the folder cannot be created (permission denied, a file in the way).
    """
    filesystem, path = resolve(location)
    try:
        filesystem.create_dir(path, recursive=True)
    except (PermissionError, FileExistsError, NotADirectoryError, OSError) as error:
        raise InputError(_write_error(location, error)) from None


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Write a file atomically (temporary name, then rename); parents are created.

    Raises
    ------
    InputError
        When the location cannot be written (permission denied, read-only filesystem, ...).
    """
    filesystem, path = resolve(location)
    folder, _, name = path.rpartition("/")
    temp = f"{folder}/{TEMP_PREFIX}{uuid.uuid4().hex}-{name}"
    try:
        filesystem.create_dir(folder, recursive=True)
        with filesystem.open_output_stream(temp) as stream:
            stream.write(data)
        filesystem.move(temp, path)
    except OSError as error:  # PermissionError and pyarrow's IOError are OSErrors
        raise InputError(_write_error(location, error)) from None


def write_text(location: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically (see :func:`write_bytes`)."""
    write_bytes(location, text.encode("utf-8"))


def write_json(location: str | os.PathLike, value: Any, *, indent: int | None = 1) -> None:
    """Write ``value`` as JSON atomically (NaN and inf become ``null``, numpy made plain)."""
    write_text(location, dumps_json(value, indent=indent) + "\n")


def write_parquet(location: str | os.PathLike, table: pa.Table) -> None:
    """Write one Parquet file atomically (see :func:`write_bytes`), raw array columns plain.

    Raises
    ------
    InputError
        When the location cannot be written.
    """
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, **parquet_write_options(table.schema))
    write_bytes(location, buffer.getvalue().to_pybytes())


def remove(location: str | os.PathLike) -> bool:
    """Delete a file, or a folder and everything in it; False when nothing was there.

    Raises
    ------
    InputError
        When it cannot be deleted.
    """
    filesystem, path = resolve(location)
    kind = filesystem.get_file_info(path).type
    try:
        if kind == pafs.FileType.Directory:
            filesystem.delete_dir(path)
        elif kind == pafs.FileType.File:
            filesystem.delete_file(path)
        else:
            return False
    except OSError as error:
        raise InputError(_write_error(location, error)) from None
    return True


@contextlib.contextmanager
def staged_output(location: str | os.PathLike) -> Iterator[Path]:
    """A local folder for writers that need one (figures, NumPy files), published to
    ``location`` at the end.

    A local ``location`` is used directly. For a URI the block writes into a temporary folder
    whose files are uploaded (each atomically) when the block ends without an error.
    """
    if not is_uri(location):
        make_dirs(location)
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="neuromem-out-") as staging:
        yield Path(staging)
        for path in sorted(Path(staging).rglob("*")):
            if path.is_file():
                write_bytes(join_uri(location, path.relative_to(staging).as_posix()),
                            path.read_bytes())


def check_writable(location: str | os.PathLike) -> None:
    """Create the output folder ``location`` and check a file can be written in it.

    Call this before starting work whose output would otherwise be lost at the end.

    Raises
    ------
    InputError
        One line naming the location and the reason.
    """
    make_dirs(location)
    probe = join_uri(location, f"{TEMP_PREFIX}{uuid.uuid4().hex}-probe")
    filesystem, path = resolve(probe)
    try:
        with filesystem.open_output_stream(path) as stream:
            stream.write(b"")
        filesystem.delete_file(path)
    except OSError as error:
        raise InputError(_write_error(location, error)) from None


def _write_error(location: str | os.PathLike, error: BaseException) -> str:
    reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
    return f"cannot write to {display(location)}: {reason}; choose another --out"


# ----------------------------------------------------------------------------------------------
# Parquet parts


def parquet_write_options(schema: pa.Schema) -> dict[str, Any]:
    """Keyword arguments of :func:`pyarrow.parquet.write_table` for a table with this schema.

    Fixed-size binary columns (raw arrays: vertex responses, layer features) are stored plain
    (no dictionary, no compression), so they decode with :func:`numpy.frombuffer` straight from
    the column buffer; other columns are dictionary-encoded and compressed with zstd.
    """
    raw = [f.name for f in schema if pa.types.is_fixed_size_binary(f.type)]
    if not raw:
        return {"compression": "zstd"}
    return {
        "compression": {f.name: ("none" if f.name in raw else "zstd") for f in schema},
        "use_dictionary": [f.name for f in schema if f.name not in raw],
        "write_statistics": [f.name for f in schema if f.name not in raw],
    }


def part_name(keys: Iterable[str]) -> str:
    """``part-<digest>.parquet``, the digest a SHA-1 of the sorted keys (same keys, same name)."""
    digest = hashlib.sha1("\n".join(sorted(map(str, keys))).encode()).hexdigest()[:20]
    return f"{PART_PREFIX}{digest}.parquet"


class PartWriter:
    """Writes and lists the Parquet parts of one output folder (local path or URI).

    Parameters
    ----------
    location : str or os.PathLike
        Output folder.
    key : str
        Column whose values name a part (:func:`part_name`) and identify rows already written.
    """

    def __init__(self, location: str | os.PathLike, key: str = "image_id") -> None:
        self.location = os.fspath(location)
        self.uri = join_uri(self.location) if not is_uri(self.location) else self.location
        self.key = key
        self.fs, self.path = resolve(self.location)

    def folder(self, errors: bool = False) -> str:
        """Filesystem path of the parts (or of the error parts)."""
        return f"{self.path}/{ERRORS_DIR}" if errors else self.path

    def prepare(self) -> int:
        """Create the folder and delete temporary files a killed run left behind.

        Returns
        -------
        int
            Number of temporary files deleted.
        """
        make_dirs(self.location)
        stale = [
            info.path
            for folder in (self.folder(), self.folder(errors=True))
            for info in self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            if info.base_name.startswith(TEMP_PREFIX)
        ]
        for path in stale:
            self.fs.delete_file(path)
        return len(stale)

    def write(self, table: pa.Table, *, errors: bool = False,
              keys: list[str] | None = None) -> str | None:
        """Write ``table`` as one part (or one error part); ``None`` when it has no rows.

        The part appears under its final name only once completely written. Its name derives
        from ``keys`` (one per row; default: the key column).
        """
        if table.num_rows == 0:
            return None
        folder = self.folder(errors)
        name = part_name(table.column(self.key).to_pylist() if keys is None else keys)
        temp = f"{folder}/{TEMP_PREFIX}{uuid.uuid4().hex}-{name}"
        try:
            self.fs.create_dir(folder, recursive=True)
            pq.write_table(table, temp, filesystem=self.fs, **parquet_write_options(table.schema))
            self.fs.move(temp, f"{folder}/{name}")
        except OSError as error:
            raise InputError(_write_error(self.location, error)) from None
        return name

    def part_paths(self, *, errors: bool = False) -> list[str]:
        """Filesystem paths of the finished parts, sorted."""
        return sorted(
            info.path
            for info in self.fs.get_file_info(
                pafs.FileSelector(self.folder(errors), allow_not_found=True))
            if info.type == pafs.FileType.File and not info.base_name.startswith((".", "_"))
        )

    def written_keys(self, *, errors: bool = False) -> set[str]:
        """Key values already in the parts (or in the error parts when ``errors``)."""
        keys: set[str] = set()
        for path in self.part_paths(errors=errors):
            keys.update(map(str, pq.read_table(path, columns=[self.key], filesystem=self.fs)
                            .column(self.key).to_pylist()))
        return keys

    def delete_parts(self, *, errors: bool = False) -> int:
        """Delete every part (or every error part); returns how many were deleted."""
        paths = self.part_paths(errors=errors)
        for path in paths:
            self.fs.delete_file(path)
        return len(paths)


__all__ = [
    "ERRORS_DIR",
    "PART_PREFIX",
    "TEMP_PREFIX",
    "PartWriter",
    "check_writable",
    "dumps_json",
    "exists",
    "is_dir",
    "is_uri",
    "join_uri",
    "list_files",
    "make_dirs",
    "parquet_write_options",
    "part_name",
    "read_bytes",
    "read_json",
    "read_text",
    "remove",
    "resolve",
    "to_jsonable",
    "write_bytes",
    "write_json",
    "write_parquet",
    "write_text",
]

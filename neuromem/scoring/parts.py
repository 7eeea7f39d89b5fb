"""A score-table directory written in parts, atomically, so that a job can resume exactly once.

Layout of ``OUT`` (a local path or any pyarrow filesystem URI: ``s3://``, ``gs://``)::

    OUT/part-<digest>.parquet         scored rows
    OUT/_errors/part-<digest>.parquet  failed rows (image_id, source, stage, error)

Every part is written to a hidden temporary name (``.tmp-...``) and then renamed, so a reader
(and a resumed job) sees either the whole part or nothing (pyarrow and pandas skip names that
start with ``.``). Read the scored rows with :func:`neuromem.scoring.table.open_table`, which
skips ``errors/``. ``<digest>``
is a hash of the part's sorted image ids: a batch that Ray retries after a worker died rewrites
the same file instead of adding a second copy of its rows.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from neuromem.data.schema import IMAGE_ID
from neuromem.scoring.table import ERRORS_DIR, parquet_write_options

TEMP_PREFIX = ".tmp-"


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path of a local path or a pyarrow filesystem URI."""
    if "://" not in str(uri):
        uri = str(Path(uri).expanduser().absolute())
    return pafs.FileSystem.from_uri(str(uri))


def part_name(image_ids: list[str]) -> str:
    """``part-<digest>.parquet``, the digest a SHA-1 of the sorted ids (same ids, same name)."""
    digest = hashlib.sha1("\n".join(sorted(image_ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


class PartWriter:
    """Writes and lists the parts of one score-table directory.

    Parameters
    ----------
    uri : str
        Output directory: local path or pyarrow filesystem URI.
    """

    def __init__(self, uri: str) -> None:
        self.uri = str(uri)
        self.fs, self.path = resolve(uri)

    def prepare(self) -> int:
        """Create the output directory and delete temporary files a killed run left behind.

        Returns the number of temporary files deleted.
        """
        self.fs.create_dir(self.path, recursive=True)
        stale = [
            info.path
            for folder in (self.path, f"{self.path}/{ERRORS_DIR}")
            for info in self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            if info.base_name.startswith(TEMP_PREFIX)
        ]
        for path in stale:
            self.fs.delete_file(path)
        return len(stale)

    def write(
        self, table: pa.Table, *, errors: bool = False, keys: list[str] | None = None
    ) -> str | None:
        """Write ``table`` as one part (scores, or ``errors/`` when ``errors``); None if empty.

        The part appears under its final name only once completely written. Its name derives
        from ``keys`` (one per row; default: the ``image_id`` column).
        """
        if table.num_rows == 0:
            return None
        folder = f"{self.path}/{ERRORS_DIR}" if errors else self.path
        if errors:
            self.fs.create_dir(folder, recursive=True)
        name = part_name(table.column(IMAGE_ID).to_pylist() if keys is None else keys)
        temp = f"{folder}/{TEMP_PREFIX}{uuid.uuid4().hex}-{name}"
        pq.write_table(table, temp, filesystem=self.fs, **parquet_write_options(table.schema))
        self.fs.move(temp, f"{folder}/{name}")
        return name

    def written_ids(self, *, errors: bool = False) -> set[str]:
        """Image ids already in the score parts (or in the error parts when ``errors``)."""
        folder = f"{self.path}/{ERRORS_DIR}" if errors else self.path
        files = [
            info.path
            for info in self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith((".", "_"))
        ]
        ids: set[str] = set()
        for path in files:
            ids.update(pq.read_table(path, columns=[IMAGE_ID], filesystem=self.fs)
                       .column(IMAGE_ID).to_pylist())
        return ids

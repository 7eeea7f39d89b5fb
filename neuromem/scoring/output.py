"""The folder a job writes a table into: what may already be there, and when to refuse.

A table folder is identified by the metadata of its parts (:mod:`neuromem.scoring.table`): each
part records the *settings that shape the table* (encoder, ROI set, vertices kept, protocol,
dataset ...). A rerun into the same folder resumes only when its settings are identical;
otherwise it refuses, naming the old and the new settings and the two ways out (a new ``--out``,
or ``--overwrite``). A Parquet file in the folder that is not a part of a neuromem table (no
metadata, or metadata without settings) is an error naming the file: it would otherwise be read
as rows of the table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pyarrow.parquet as pq

from neuromem.errors import InputError
from neuromem.runtime.storage import PartWriter, display
from neuromem.scoring.table import METADATA_KEY

SETTINGS_KEY = "settings"
"""Key of the table metadata holding the settings that shape the table."""


def existing_settings(writer: PartWriter) -> dict[str, Any] | None:
    """The settings recorded in the parts already in the folder (None when it has none).

    Raises
    ------
    InputError
        A Parquet file there is not a part of a neuromem table, or two parts disagree.
    """
    found: dict[str, Any] | None = None
    found_in = ""
    for path in writer.part_paths():
        try:
            schema = pq.read_schema(path, filesystem=writer.fs)
        except Exception as error:  # noqa: BLE001 - any unreadable file is named
            raise InputError(f"{path} in {display(writer.location)} is not a Parquet file "
                             f"({type(error).__name__}); remove it or choose another --out") from None
        raw = (schema.metadata or {}).get(METADATA_KEY)
        settings = json.loads(raw).get(SETTINGS_KEY) if raw else None
        if settings is None:
            raise InputError(f"{path} is not part of a neuromem table (no {SETTINGS_KEY} in its "
                             f"metadata); remove it or choose another --out")
        if found is None:
            found, found_in = settings, path
        elif settings != found:
            raise InputError(f"{display(writer.location)} mixes tables: {found_in} and {path} were "
                             "made with different settings; use --overwrite or another --out")
    return found


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``name: old → new`` for every setting that differs."""
    names = sorted(set(old) | set(new))
    return [f"{name}: {old.get(name)!r} → {new.get(name)!r}" for name in names
            if old.get(name) != new.get(name)]


def prepare_output(writer: PartWriter, settings: Mapping[str, Any], *,
                   overwrite: bool) -> int:
    """Make the folder ready for a run with ``settings``; refuse to mix tables.

    Parameters
    ----------
    writer : PartWriter
        The output folder.
    settings : mapping
        The settings that shape the table (JSON types).
    overwrite : bool
        Delete an existing table (rows and errors) instead of refusing or resuming.

    Returns
    -------
    int
        Parts deleted by ``overwrite``.

    Raises
    ------
    InputError
        The folder holds a table made with other settings, or files that are not parts.
    """
    writer.prepare()
    if overwrite:
        return writer.delete_parts() + writer.delete_parts(errors=True)
    old = existing_settings(writer)
    if old is not None and dict(old) != dict(settings):
        changed = "; ".join(differences(old, settings))
        raise InputError(f"{display(writer.location)} already holds a table made with other "
                         f"settings ({changed}); choose a new --out, or add --overwrite to "
                         "replace it")
    return 0

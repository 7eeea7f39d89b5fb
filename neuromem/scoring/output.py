"""The folder a job writes a table into: what may already be there, and when to refuse.

A table folder is identified by the metadata of its parts (:mod:`neuromem.scoring.table`): each
part records the *settings that shape the table* (encoder, ROI set, vertices kept, protocol,
dataset ...). A rerun into the same folder resumes only when its settings are identical;
otherwise it refuses, naming the old and the new settings and the two ways out (a new ``--out``,
or ``--overwrite``). A Parquet file in the folder that is not a part of a neuromem table (no
metadata, or metadata without settings) is an error naming the file: it would otherwise be read
as rows of the table.

A job whose output folder holds several files (a run) records its settings in ``run.json``
(:func:`prepare_run`) and follows the same rule: a rerun with the same settings resumes what the
job resumes, a rerun with other settings refuses, ``--overwrite`` replaces the run's outputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pyarrow.parquet as pq

from neuromem.errors import InputError
from neuromem.runtime.storage import (
    PartWriter,
    check_writable,
    display,
    exists,
    join_uri,
    read_json,
    remove,
    write_json,
)
from neuromem.scoring.table import METADATA_KEY

SETTINGS_KEY = "settings"
"""Key of the table metadata holding the settings that shape the table."""

RUN_RECORD = "run.json"
"""File of a run's output folder recording its settings (and, once done, what it did)."""


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


class MetadataStamp:
    """``PartsOutput.metadata`` of a job whose parts all carry the same metadata.

    Calling it with the built model gives the function that stores ``metadata`` (with the
    settings under :data:`SETTINGS_KEY`) in a part's schema.
    """

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        self.metadata = dict(metadata)

    def __call__(self, model: Any):
        from neuromem.scoring.table import write_metadata

        return lambda table: write_metadata(table, self.metadata)


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


def prepare_run(out: str, settings: Mapping[str, Any], *, overwrite: bool,
                outputs: tuple[str, ...] = ()) -> bool:
    """Make a run's output folder ready; refuse a rerun with other settings.

    Checks the folder is writable, compares ``settings`` with those of ``out/run.json``, then
    writes ``run.json`` with ``settings`` (so a killed run followed by the same command resumes).

    Parameters
    ----------
    out : str
        Output folder (local path or URI).
    settings : mapping
        The settings that shape the run's outputs (JSON types).
    overwrite : bool
        Delete ``outputs`` (and ``run.json``) of an earlier run instead of refusing.
    outputs : tuple of str
        Files and folders (relative to ``out``) the run writes, deleted by ``overwrite``.

    Returns
    -------
    bool
        True when an earlier run with the same settings is resumed.

    Raises
    ------
    InputError
        The folder cannot be written, or holds a run made with other settings.
    """
    check_writable(out)
    record = join_uri(out, RUN_RECORD)
    settings = json.loads(json.dumps(dict(settings)))  # JSON types, as read back
    resumed = False
    if exists(record):
        old = read_json(record)
        old = old.get(SETTINGS_KEY) if isinstance(old, dict) else None
        if overwrite:
            for name in (*outputs, RUN_RECORD):
                remove(join_uri(out, name))
        elif old != settings:
            changed = "; ".join(differences(old or {}, settings))
            raise InputError(f"{display(out)} already holds a run made with other settings "
                             f"({changed}); choose a new --out, or add --overwrite to replace it")
        else:
            resumed = True
    write_json(record, {SETTINGS_KEY: settings})
    return resumed

"""Typed job configurations: one frozen dataclass per job, built from the command line or YAML.

A job's config subclasses :class:`JobConfig` (``@dataclass(frozen=True)``). The command builds it
with :meth:`JobConfig.from_args` (fields are read from the parsed options of the same name), a
YAML file with :meth:`JobConfig.from_yaml`, and code with the constructor. Everything below the
command's ``run()`` takes the config, never an :class:`argparse.Namespace`. :meth:`check` raises
:class:`~neuromem.errors.InputError` for values the job cannot run with, *before* any model is
loaded or Ray is started, and :meth:`to_dict` is what outputs record.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any, Self

import yaml

from neuromem.errors import InputError
from neuromem.runtime.storage import is_uri, read_text, to_jsonable


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Base class of job configurations (see the module docstring)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> Self:
        """The config whose fields take the values of the options of the same name.

        Options without a field are ignored (``verbose``, ``debug``); fields without an
        option keep their defaults. The config is checked.
        """
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                  if hasattr(args, f.name)}
        values.update(overrides)
        config = cls(**values)
        config.check()
        return config

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "settings",
                     **overrides: Any) -> Self:
        """The config of a mapping (e.g. parsed YAML); unknown keys raise :class:`InputError`."""
        if not isinstance(values, Mapping):
            raise InputError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                    and f.name not in values and f.name not in overrides]
        if required:
            raise InputError(f"{source}: missing required setting(s) {', '.join(required)}")
        config = cls(**{**values, **overrides})
        config.check()
        return config

    @classmethod
    def from_yaml(cls, location: str | os.PathLike, **overrides: Any) -> Self:
        """The config of a YAML file (local path or URI); ``overrides`` win over the file."""
        try:
            values = yaml.safe_load(read_text(location)) or {}
        except yaml.YAMLError as error:
            raise InputError(f"{os.fspath(location)} is not valid YAML: {error}") from None
        return cls.from_mapping(values, source=os.fspath(location), **overrides)

    def check(self) -> None:
        """Raise :class:`InputError` for values the job cannot run with (subclasses extend)."""

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON types (what outputs record)."""
        return to_jsonable(dataclasses.asdict(self))

    def replace(self, **changes: Any) -> Self:
        """A checked copy with some fields changed."""
        config = dataclasses.replace(self, **changes)
        config.check()
        return config

    # --- helpers for check() ----------------------------------------------------------------

    def require_at_least(self, minimum: float, *names: str) -> None:
        """Each named field (when not None) must be ``>= minimum``."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise InputError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")

    def require_local(self, *names: str) -> None:
        """Each named field (when not None) must be a local path, not a URI (for outputs that
        only a local folder can take)."""
        for name in names:
            value = getattr(self, name)
            if value is not None and is_uri(value):
                raise InputError(f"--{name.replace('_', '-')} must be a local folder here, got "
                                 f"{value}; write locally and copy the folder")

    def require_choice(self, name: str, choices: typing.Iterable[str]) -> None:
        """The named field must be one of ``choices``."""
        choices = tuple(choices)
        value = getattr(self, name)
        if value not in choices:
            raise InputError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, "
                             f"got {value!r}")

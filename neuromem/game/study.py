"""A memory-game study: its images (with conditions), timing, sequence and flagging settings.

A study is one YAML file; image paths are relative to it::

    name: lora-vs-base
    completion_code: C0DE1234          # shown at the end (crowd platforms)
    images:                            # every image the study may show
      - {image_id: p01_base, path: images/p01_base.png, condition: base, pair: p01}
      - {image_id: p01_lora, path: images/p01_lora.png, condition: lora, pair: p01}
      - {image_id: filler_001, path: fillers/001.jpg}
    timing: {image_ms: 600, gap_ms: 800}           # Khosla et al. 2015
    sequence:
      length: 186                      # trials per participant
      targets: 22                      # target images per participant (each shown twice)
      target_lag: [91, 109]            # positions between a target's two showings
      vigilance: 12                    # vigilance repeats per participant
      vigilance_lag: [1, 7]
    flags: {max_vigilance_miss: 0.5, max_false_alarm: 0.5, min_median_rt_ms: 200}

Images with a ``condition`` are the ones measured (targets); those without are fillers.
Defaults follow the LaMem protocol (Isola et al. 2011; Khosla et al. 2015) where it states one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neuromem.errors import InputError
from neuromem.game.scoring import MAX_FALSE_ALARM, MAX_VIGILANCE_MISS, MIN_MEDIAN_RT_MS

#: Image formats the page can show.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")


@dataclass(frozen=True)
class Timing:
    """Display timing, ms: each image for ``image_ms``, then a blank ``gap_ms``."""

    image_ms: int = 600
    gap_ms: int = 800


@dataclass(frozen=True)
class SequenceSettings:
    """How a participant's sequence is built (:func:`neuromem.game.sequence.build_sequence`)."""

    length: int = 186
    targets: int = 22
    target_lag: tuple[int, int] = (91, 109)
    vigilance: int = 12
    vigilance_lag: tuple[int, int] = (1, 7)


@dataclass(frozen=True)
class Flags:
    """A participant is flagged above these rates (LaMem discards such workers), or below this
    median response time (:func:`neuromem.game.scoring.participant_flags`)."""

    max_vigilance_miss: float = MAX_VIGILANCE_MISS
    max_false_alarm: float = MAX_FALSE_ALARM
    min_median_rt_ms: float = MIN_MEDIAN_RT_MS


@dataclass(frozen=True)
class StudyImage:
    """One image: its id, file, and (for measured images) condition and pair key."""

    image_id: str
    path: Path
    condition: str | None = None
    pair: str | None = None


@dataclass(frozen=True)
class Study:
    """A loaded, checked study (see the module docstring)."""

    name: str
    images: tuple[StudyImage, ...]
    completion_code: str
    timing: Timing = field(default_factory=Timing)
    sequence: SequenceSettings = field(default_factory=SequenceSettings)
    flags: Flags = field(default_factory=Flags)

    @property
    def by_id(self) -> dict[str, StudyImage]:
        return {image.image_id: image for image in self.images}

    @property
    def target_ids(self) -> list[str]:
        """Measured images (with a condition)."""
        return [image.image_id for image in self.images if image.condition is not None]

    @property
    def filler_ids(self) -> list[str]:
        return [image.image_id for image in self.images if image.condition is None]

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["images"] = [{k: str(v) if isinstance(v, Path) else v
                             for k, v in asdict(image).items()} for image in self.images]
        return record


def _section(raw: dict, name: str, cls, path: Path):
    values = raw.get(name) or {}
    if not isinstance(values, dict):
        raise InputError(f"study {path}: '{name}' must be a mapping")
    known = set(cls.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise InputError(f"study {path}: unknown '{name}' keys {sorted(unknown)}; "
                         f"expected some of {sorted(known)}")
    try:
        converted = {k: tuple(int(x) for x in v) if isinstance(v, list) else v
                     for k, v in values.items()}
        return cls(**converted)
    except (TypeError, ValueError) as error:
        raise InputError(f"study {path}: bad '{name}': {error}") from None


def load_study(path: str | Path) -> Study:
    """Read and check a study YAML.

    Raises
    ------
    InputError
        One line naming what is wrong: unreadable file, missing keys, a duplicate or missing
        image, an unsupported format, settings the sequence cannot satisfy.
    """
    import yaml

    from neuromem.game.sequence import check_feasible

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise InputError(f"cannot read study {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not raw.get("name") or not raw.get("images"):
        raise InputError(f"study {path} needs 'name' and a list of 'images' "
                         "(see `neuromem game make --help`)")
    unknown = set(raw) - {"name", "images", "timing", "sequence", "flags", "completion_code"}
    if unknown:
        raise InputError(f"study {path}: unknown keys {sorted(unknown)}")
    images, seen = [], set()
    for i, item in enumerate(raw["images"]):
        if not isinstance(item, dict) or "image_id" not in item or "path" not in item:
            raise InputError(f"study {path}: image {i} needs 'image_id' and 'path'")
        image_id = str(item["image_id"])
        if image_id in seen:
            raise InputError(f"study {path}: image id {image_id!r} appears twice")
        seen.add(image_id)
        file = (path.parent / str(item["path"])).resolve()
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"study {path}: {item['path']} is not one of "
                             f"{', '.join(IMAGE_SUFFIXES)}")
        if not file.is_file():
            raise InputError(f"study {path}: image {image_id!r} not found at {file}")
        condition = item.get("condition")
        images.append(StudyImage(image_id, file, None if condition is None else str(condition),
                                 None if item.get("pair") is None else str(item["pair"])))
    study = Study(
        name=str(raw["name"]), images=tuple(images),
        completion_code=str(raw.get("completion_code") or f"NM-{raw['name']}".upper()),
        timing=_section(raw, "timing", Timing, path),
        sequence=_section(raw, "sequence", SequenceSettings, path),
        flags=_section(raw, "flags", Flags, path))
    if study.timing.image_ms < 50 or study.timing.gap_ms < 0:
        raise InputError(f"study {path}: image_ms must be >= 50 and gap_ms >= 0")
    check_feasible(study, source=str(path))
    return study


def make_study(path: str | Path, *, name: str, images: list[dict[str, Any]],
               completion_code: str | None = None, **settings: dict[str, Any]) -> Study:
    """Write a study YAML (image paths made relative to it) and return it loaded.

    Parameters
    ----------
    path : str or Path
        The YAML file to write.
    name : str
        Study name.
    images : list of dict
        ``image_id``, ``path`` (absolute or relative to the current folder), optional
        ``condition`` and ``pair``.
    completion_code : str or None
        Code shown at the end; None: derived from the name.
    **settings
        ``timing``, ``sequence``, ``flags`` sections.
    """
    import os

    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = []
    for item in images:
        entry = {"image_id": str(item["image_id"]),
                 "path": os.path.relpath(Path(item["path"]).resolve(), path.parent.resolve())}
        entry.update({k: str(item[k]) for k in ("condition", "pair") if item.get(k) is not None})
        entries.append(entry)
    document = {"name": name, "completion_code": completion_code or f"NM-{name}".upper(),
                "images": entries, **{k: v for k, v in settings.items() if v}}
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return load_study(path)

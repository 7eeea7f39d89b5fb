"""A participant's image sequence, built on the server (the LaMem continuous-recognition game).

Each participant gets ``targets`` measured images shown twice, the repeat ``target_lag``
positions after the first showing; ``vigilance`` fillers repeated after ``vigilance_lag``
positions (easy repeats that check attention); the other positions are fillers shown once.
Targets are assigned so that every measured image is a target for as many participants as
possible (fewest times a target so far first, ties broken at random), and a participant sees an
image as a target at most once. Fillers come from the study's images without a condition, then
from measured images that are not this participant's targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from neuromem.errors import InputError

#: Placement attempts before a sequence is declared impossible.
MAX_ATTEMPTS = 200


@dataclass(frozen=True)
class Trial:
    """One position of a sequence.

    Attributes
    ----------
    position : int
        0-based place in the sequence.
    image_id : str
    kind : str
        ``target``, ``vigilance`` or ``filler`` (the image's role for this participant).
    repeat : bool
        True on the second showing of a target or vigilance image.
    lag : int or None
        For a repeat: positions since the first showing.
    """

    position: int
    image_id: str
    kind: str
    repeat: bool = False
    lag: int | None = None


def check_feasible(study, *, source: str = "study") -> None:
    """Raise :class:`InputError` when ``study``'s settings cannot give a sequence."""
    s = study.sequence
    for name, (low, high) in (("target_lag", s.target_lag), ("vigilance_lag", s.vigilance_lag)):
        if not 1 <= low <= high:
            raise InputError(f"{source}: {name} must be [low, high] with 1 <= low <= high, "
                             f"got {[low, high]}")
    if s.targets < 1 or s.vigilance < 0:
        raise InputError(f"{source}: sequence needs targets >= 1 and vigilance >= 0")
    if s.length < 2 * s.targets + 2 * s.vigilance:
        raise InputError(f"{source}: a sequence of {s.length} cannot hold {s.targets} target and "
                         f"{s.vigilance} vigilance pairs")
    if s.target_lag[0] >= s.length:
        raise InputError(f"{source}: target_lag {list(s.target_lag)} does not fit a sequence of "
                         f"{s.length}")
    by_id = study.by_id
    drawable = len({by_id[i].pair or f"image:{i}" for i in study.target_ids})
    if drawable < s.targets:
        raise InputError(f"{source}: {s.targets} targets per participant, but only {drawable} "
                         "can be drawn (images with a condition, one per pair)")
    needed = s.length - s.targets - s.vigilance  # distinct images shown by one participant
    showable = len(study.filler_ids) + drawable  # one image of each pair at most
    if showable < needed:
        raise InputError(f"{source}: a participant sees {needed} distinct images, the study can "
                         f"show {showable} (fillers, and one image of each pair); add fillers or "
                         "shorten the sequence")


def choose_targets(target_ids: Sequence[str], times_target: Mapping[str, int], n: int,
                   rng: np.random.Generator, pair_of: Mapping[str, str | None] | None = None
                   ) -> list[str]:
    """The ``n`` measured images a new participant gets as targets: those that have been a
    target least often so far, ties broken at random, at most one image of each pair (a
    participant never sees both twins of a base/engineered pair as targets)."""
    pair_of = pair_of or {}
    tiebreak = rng.permutation(len(target_ids))
    order = sorted(range(len(target_ids)),
                   key=lambda i: (times_target.get(target_ids[i], 0), tiebreak[i]))
    chosen, pairs = [], set()
    for i in order:
        pair = pair_of.get(target_ids[i])
        if pair is not None and pair in pairs:
            continue
        chosen.append(target_ids[i])
        if pair is not None:
            pairs.add(pair)
        if len(chosen) == n:
            return chosen
    raise InputError(f"only {len(chosen)} targets can be drawn without showing both twins of a "
                     f"pair; the study asks for {n} per participant")


def _place_pairs(free: np.ndarray, n: int, lags: tuple[int, int], rng: np.random.Generator
                 ) -> list[tuple[int, int]] | None:
    """``n`` (first, second) slot pairs among ``free`` with second - first in ``lags``."""
    pairs = []
    for _ in range(n):
        firsts = np.flatnonzero(free)
        rng.shuffle(firsts)
        for first in firsts:
            seconds = [first + lag for lag in range(lags[0], lags[1] + 1)
                       if first + lag < free.size and free[first + lag]]
            if seconds:
                second = int(rng.choice(seconds))
                free[first] = free[second] = False
                pairs.append((int(first), second))
                break
        else:
            return None
    return pairs


def build_sequence(study, targets: Sequence[str], rng: np.random.Generator) -> list[Trial]:
    """The trials of one participant whose targets are ``targets``.

    Raises
    ------
    InputError
        When the settings leave no room for the pairs (after :data:`MAX_ATTEMPTS` draws).
    """
    s = study.sequence
    targets = list(targets)
    by_id = study.by_id
    pairs_seen = {by_id[t].pair for t in targets} - {None}
    fillers = list(study.filler_ids)
    for image_id in rng.permutation(study.target_ids):  # at most one image of a pair is shown
        pair = by_id[image_id].pair
        if image_id not in targets and pair not in pairs_seen:
            fillers.append(str(image_id))
            if pair is not None:
                pairs_seen.add(pair)
    if len(fillers) < s.length - 2 * len(targets) - s.vigilance:
        raise InputError(f"study {study.name}: too few fillers for a sequence of {s.length}; "
                         "add images without a condition")
    for _ in range(MAX_ATTEMPTS):
        free = np.ones(s.length, dtype=bool)
        target_pairs = _place_pairs(free, len(targets), s.target_lag, rng)
        vigilance_pairs = None if target_pairs is None else _place_pairs(
            free, s.vigilance, s.vigilance_lag, rng)
        if vigilance_pairs is not None:
            break
    else:
        raise InputError(f"study {study.name}: cannot place {len(targets)} target pairs (lag "
                         f"{list(s.target_lag)}) and {s.vigilance} vigilance pairs (lag "
                         f"{list(s.vigilance_lag)}) in {s.length} positions")
    filler_order = [fillers[i] for i in rng.permutation(len(fillers))]
    trials: dict[int, Trial] = {}
    for image_id, (first, second) in zip(rng.permutation(targets), target_pairs, strict=True):
        trials[first] = Trial(first, str(image_id), "target")
        trials[second] = Trial(second, str(image_id), "target", True, second - first)
    for (first, second) in vigilance_pairs:
        image_id = filler_order.pop()
        trials[first] = Trial(first, image_id, "vigilance")
        trials[second] = Trial(second, image_id, "vigilance", True, second - first)
    for position in np.flatnonzero(free):
        trials[int(position)] = Trial(int(position), filler_order.pop(), "filler")
    return [trials[p] for p in range(s.length)]

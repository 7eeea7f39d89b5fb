"""Scores from the responses of a continuous-recognition memory game (pure pandas/numpy/scipy).

The input everywhere is a *response record*: a pandas DataFrame with one row per image shown to
a participant, with the columns named by the constants below:

======================  ========  =========================================================
column                  type      meaning
======================  ========  =========================================================
``participant``         str       participant (one game session each)
``image_id``            str       the study's image id (the id of score tables)
``kind``                str       the image's role in that sequence: ``target``,
                                  ``vigilance`` or ``filler``
``repeat``              bool      True on the second showing of a target or vigilance image
``lag``                 float     on repeats: positions between the two showings
                                  (repeat position minus first position); NaN otherwise
``response``            bool      the participant pressed (or tapped) during the trial
======================  ========  =========================================================

Per image (Isola et al. 2011; Khosla et al. 2015): the *hit rate* is the fraction of its target
repeats that were detected, the *false-alarm rate* the fraction of its first showings that drew
a response, and the *memorability* the hit rate corrected to a common lag
(:func:`fit_lag_decay`). The *split-half consistency* is the Spearman correlation of the
per-image scores of two random halves of the participants, averaged over many seeded splits
(:func:`split_half`). Participants who miss too many vigilance repeats or false-alarm too often
are flagged (:func:`participant_flags`) and usually left out before scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from neuromem.errors import InputError

PARTICIPANT = "participant"
IMAGE_ID = "image_id"
KIND = "kind"
REPEAT = "repeat"
LAG = "lag"
RESPONSE = "response"
RESPONSE_COLUMNS = (PARTICIPANT, IMAGE_ID, KIND, REPEAT, LAG, RESPONSE)
"""Columns every response record has."""
RT_MS = "rt_ms"
"""Optional column: milliseconds from image onset to the press (NaN without a press)."""

TARGET, VIGILANCE, FILLER = "target", "vigilance", "filler"
KINDS = (TARGET, VIGILANCE, FILLER)

MEMORABILITY_HUMAN = "memorability_human"
"""Column of the lag-corrected human memorability in exported tables (``neuromem decompose
--memorability memorability_human`` on a score table annotated with it)."""

#: Default flag thresholds, the same as a study's ``flags`` (:class:`neuromem.game.study.Flags`):
#: a participant who misses more than half of the vigilance repeats, or responds to more than
#: 30 % of the first showings, is flagged. The rule is LaMem's; the numbers are this project's.
MAX_VIGILANCE_MISS = 0.5
MAX_FALSE_ALARM = 0.3
#: A participant whose presses have a median response time under this many milliseconds from
#: image onset is flagged: in rapid go/no-go picture categorisation the brain signals the
#: decision at ~150 ms and the fastest presses come later still (Thorpe et al. 1996), so a
#: median press under 200 ms anticipates the image instead of answering it.
MIN_MEDIAN_RT_MS = 200.0


def check_responses(responses: pd.DataFrame) -> None:
    """Raise :class:`InputError` unless ``responses`` is a response record (module docstring)."""
    missing = [c for c in RESPONSE_COLUMNS if c not in responses.columns]
    if missing:
        raise InputError(f"the response record lacks the columns {missing}; it has "
                         f"{list(responses.columns)}")
    unknown = sorted(set(responses[KIND].astype(str)) - set(KINDS))
    if unknown:
        raise InputError(f"unknown trial kinds {unknown}; expected {list(KINDS)}")
    repeats = responses[REPEAT].astype(bool)
    lags = responses.loc[repeats & (responses[KIND] == TARGET), LAG].to_numpy(dtype=float)
    if not np.all(np.isfinite(lags) & (lags > 0)):
        raise InputError("every target repeat needs a positive finite lag")


def target_repeats(responses: pd.DataFrame) -> pd.DataFrame:
    """The rows of the second showings of target images (the trials that score images)."""
    return responses[responses[REPEAT].astype(bool) & (responses[KIND] == TARGET)]


@dataclass(frozen=True)
class LagFit:
    """The lag-decay fit of :func:`fit_lag_decay`.

    Attributes
    ----------
    memorability : pandas.Series
        ``m_T`` per image (index ``image_id``), the hit rate expected at the reference lag.
    alpha : float
        Common decay: the change of the hit rate per unit of ``log(lag / T)`` (negative when
        memory fades with lag).
    reference_lag : float
        ``T``, in images.
    """

    memorability: pd.Series
    alpha: float
    reference_lag: float


def fit_lag_decay(image_ids: np.ndarray, hits: np.ndarray, lags: np.ndarray,
                  reference_lag: float) -> LagFit:
    """Per-image memorability at a common lag, as LaMem corrects for variable lags.

    Khosla, Raju, Torralba & Oliva, "Understanding and predicting image memorability at a large
    scale", ICCV 2015, Sec. 3: the hit of participant ``j`` on image ``i`` repeated after
    ``t_ij`` images is modelled as decaying linearly in log-lag with a slope ``alpha`` shared
    by all images, ``m_i(t) = m_T(i) + alpha * log(t / T)``, and ``alpha`` and ``m_T`` minimise

    ``sum_i (1 / n_i) sum_j (x_ij - m_T(i) - alpha * log(t_ij / T)) ** 2``

    (``n_i`` the responses to image ``i``, ``x_ij`` in {0, 1}). The paper alternates the two
    closed-form updates; this function returns their fixed point directly (the weighted
    within-image least-squares slope, then ``m_T(i) = mean_j x_ij - alpha * mean_j log(t_ij/T)``).
    When the lags do not vary within any image, ``alpha`` is not identified and is 0 (the
    memorability is the plain hit rate). With a narrow lag range (LaMem's protocol: 91-109)
    ``alpha`` is noisy but the correction ``alpha * mean log(t/T)`` stays small, because
    ``|log(t/T)|`` does (< 0.1 there); the correction matters when a study varies the lag widely.

    Parameters
    ----------
    image_ids : numpy.ndarray
        ``(N,)`` image of each target repeat.
    hits : numpy.ndarray
        ``(N,)`` 1 when the repeat was detected, else 0.
    lags : numpy.ndarray
        ``(N,)`` positive lags, in images.
    reference_lag : float
        ``T``: the lag the scores are corrected to (e.g. the middle of the study's lag range).

    Returns
    -------
    LagFit
    """
    if reference_lag <= 0:
        raise InputError(f"the reference lag must be positive, got {reference_lag}")
    frame = pd.DataFrame({"image": np.asarray(image_ids), "x": np.asarray(hits, dtype=float),
                          "ell": np.log(np.asarray(lags, dtype=float) / reference_lag)})
    grouped = frame.groupby("image", sort=True)
    n = grouped["x"].transform("size").to_numpy()
    dx = frame["x"].to_numpy() - grouped["x"].transform("mean").to_numpy()
    dl = frame["ell"].to_numpy() - grouped["ell"].transform("mean").to_numpy()
    denominator = float(np.sum(dl * dl / n))
    alpha = float(np.sum(dl * dx / n) / denominator) if denominator > 1e-12 else 0.0
    means = grouped[["x", "ell"]].mean()
    memorability = (means["x"] - alpha * means["ell"]).rename(MEMORABILITY_HUMAN)
    memorability.index.name = IMAGE_ID
    return LagFit(memorability=memorability, alpha=alpha, reference_lag=float(reference_lag))


def image_scores(responses: pd.DataFrame, reference_lag: float | None = None) -> pd.DataFrame:
    """Per-image hit rate, false-alarm rate, participants and lag-corrected memorability.

    Parameters
    ----------
    responses : pandas.DataFrame
        A response record (module docstring), usually without flagged participants.
    reference_lag : float or None
        ``T`` of :func:`fit_lag_decay`; None: the median lag of the target repeats.

    Returns
    -------
    pandas.DataFrame
        One row per image that was a target at least once, sorted by ``image_id``:
        ``image_id``; ``hit_rate`` (detected target repeats / target repeats);
        ``false_alarm_rate`` (responses to its first showings / first showings, over every
        role the image had; NaN if never shown first); ``n_participants`` (participants who
        saw it repeat as a target); ``hits``; ``mean_lag``; ``memorability_human`` (the hit
        rate at the reference lag, :func:`fit_lag_decay`). ``attrs`` holds ``alpha`` and
        ``reference_lag``.
    """
    check_responses(responses)
    targets = target_repeats(responses)
    if targets.empty:
        raise InputError("the responses hold no target repeat: nothing to score")
    lags = targets[LAG].to_numpy(dtype=float)
    reference = float(np.median(lags)) if reference_lag is None else float(reference_lag)
    hits = targets[RESPONSE].astype(bool).to_numpy()
    by_image = targets.assign(_hit=hits).groupby(IMAGE_ID, sort=True)
    table = pd.DataFrame({
        "hit_rate": by_image["_hit"].mean(),
        "n_participants": by_image[PARTICIPANT].nunique(),
        "hits": by_image["_hit"].sum().astype(int),
        "mean_lag": by_image[LAG].mean(),
    })
    firsts = responses[~responses[REPEAT].astype(bool)]
    table["false_alarm_rate"] = (firsts[RESPONSE].astype(float).groupby(firsts[IMAGE_ID]).mean()
                                 .reindex(table.index))
    fit = fit_lag_decay(targets[IMAGE_ID].to_numpy(), hits, lags, reference)
    table[MEMORABILITY_HUMAN] = fit.memorability.reindex(table.index)
    table = table.reset_index()[[IMAGE_ID, "hit_rate", "false_alarm_rate", "n_participants",
                                 "hits", "mean_lag", MEMORABILITY_HUMAN]]
    table.attrs.update(alpha=fit.alpha, reference_lag=fit.reference_lag)
    return table


def spearman_brown(r: float | np.ndarray, factor: float = 2.0) -> float | np.ndarray:
    """Spearman-Brown prophecy: reliability of a test ``factor`` times as long, ``k r / (1 + (k-1) r)``."""
    r = np.asarray(r, dtype=float)
    out = factor * r / (1.0 + (factor - 1.0) * r)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class SplitHalf:
    """Split-half consistency of per-image scores (:func:`split_half`).

    Attributes
    ----------
    rho : float
        Mean over splits of the Spearman correlation between the two halves' scores.
    rho_corrected : float
        ``rho`` Spearman-Brown corrected to the full number of participants
        (:func:`spearman_brown` with factor 2).
    rhos : numpy.ndarray
        ``(S,)`` correlation of each split.
    n_images : float
        Mean number of images scored in both halves.
    """

    rho: float
    rho_corrected: float
    rhos: np.ndarray
    n_images: float


def split_half(responses: pd.DataFrame, *, n_splits: int = 100, seed: int = 0,
               lag_corrected: bool = False, reference_lag: float | None = None) -> SplitHalf:
    """Split-half consistency: Spearman between the scores of random halves of the participants.

    As in Isola et al. 2011 and Khosla et al. 2015: the participants are split at random into two
    halves of equal size (one more in the first when odd), each half scores every image, and the
    Spearman correlation is taken over the images scored by both halves; this is repeated
    ``n_splits`` times with a seeded generator and averaged. The mean is also reported
    Spearman-Brown corrected to the whole group.

    Parameters
    ----------
    responses : pandas.DataFrame
        A response record (module docstring).
    n_splits : int
        Random splits (>= 1).
    seed : int
        Seed of the splits.
    lag_corrected : bool
        Correlate ``memorability_human`` (each half fits its own lag decay) instead of the hit
        rate.
    reference_lag : float or None
        ``T`` for the lag correction (None: the median lag of all target repeats).

    Returns
    -------
    SplitHalf
    """
    check_responses(responses)
    if n_splits < 1:
        raise InputError(f"n_splits must be at least 1, got {n_splits}")
    targets = target_repeats(responses)
    participants = np.asarray(sorted(targets[PARTICIPANT].astype(str).unique()))
    if len(participants) < 2:
        raise InputError(f"split-half consistency needs at least 2 participants, got "
                         f"{len(participants)}")
    if reference_lag is None:
        reference_lag = float(np.median(targets[LAG].to_numpy(dtype=float)))
    images, image_code = np.unique(targets[IMAGE_ID].astype(str).to_numpy(), return_inverse=True)
    who = np.searchsorted(participants, targets[PARTICIPANT].astype(str).to_numpy())
    hits = targets[RESPONSE].astype(float).to_numpy()
    lags = targets[LAG].to_numpy(dtype=float)

    def half_scores(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.bincount(image_code[rows], minlength=len(images))
        if lag_corrected:
            fit = fit_lag_decay(image_code[rows], hits[rows], lags[rows], reference_lag)
            scores = np.full(len(images), np.nan)
            scores[fit.memorability.index.to_numpy()] = fit.memorability.to_numpy()
            return scores, counts
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.bincount(image_code[rows], hits[rows], len(images)) / counts, counts

    rng = np.random.default_rng(seed)
    rhos, n_common = np.empty(n_splits), np.empty(n_splits)
    for s in range(n_splits):
        in_first = np.zeros(len(participants), bool)
        in_first[rng.permutation(len(participants))[: (len(participants) + 1) // 2]] = True
        a, count_a = half_scores(in_first[who])
        b, count_b = half_scores(~in_first[who])
        common = (count_a > 0) & (count_b > 0)
        n_common[s] = common.sum()
        rhos[s] = (stats.spearmanr(a[common], b[common]).statistic if n_common[s] > 2
                   else np.nan)
    rho = float(np.nanmean(rhos)) if np.isfinite(rhos).any() else float("nan")
    return SplitHalf(rho=rho, rho_corrected=spearman_brown(rho), rhos=rhos,
                     n_images=float(n_common.mean()))


def expected_split_half(memorability: np.ndarray, n_per_half: float) -> float:
    """Split-half Spearman expected when each half scores each image from ``n_per_half`` responses.

    With true hit probabilities ``p_i`` and binomial sampling, the correlation of two independent
    halves' hit rates is the reliability ``var(p) / (var(p) + mean(p (1 - p)) / n)``; for
    bivariate-normal scores Spearman's rho is ``(6 / pi) arcsin(r / 2)`` (Pearson 1907). A
    check of :func:`split_half` on simulated participants.

    Parameters
    ----------
    memorability : numpy.ndarray
        ``(I,)`` true hit probabilities.
    n_per_half : float
        Responses per image in each half.

    Returns
    -------
    float
    """
    p = np.asarray(memorability, dtype=float)
    true_var = float(np.var(p))
    r = true_var / (true_var + float(np.mean(p * (1 - p))) / n_per_half)
    return float(6.0 / np.pi * np.arcsin(r / 2.0))


def participant_flags(responses: pd.DataFrame, *, max_vigilance_miss: float = MAX_VIGILANCE_MISS,
                      max_false_alarm: float = MAX_FALSE_ALARM,
                      min_median_rt_ms: float = MIN_MEDIAN_RT_MS) -> pd.DataFrame:
    """Per participant: vigilance miss rate, false-alarm rate, median response time and whether
    they are flagged.

    Parameters
    ----------
    responses : pandas.DataFrame
        A response record (module docstring).
    max_vigilance_miss : float
        Flag when more than this fraction of the vigilance repeats went undetected.
    max_false_alarm : float
        Flag when more than this fraction of first showings drew a response.
    min_median_rt_ms : float
        Flag when the median response time of the participant's presses is below this
        (milliseconds from image onset; only where the record has an ``rt_ms`` column).

    Returns
    -------
    pandas.DataFrame
        One row per participant (sorted): ``participant``, ``n_trials``, ``vigilance_repeats``,
        ``vigilance_miss_rate`` (NaN without vigilance repeats), ``false_alarm_rate``,
        ``hit_rate`` (target repeats), ``median_rt_ms`` (NaN without presses or times),
        ``flagged`` (bool) and ``reason`` ("" when not flagged).
    """
    check_responses(responses)
    frame = responses.assign(_resp=responses[RESPONSE].astype(float),
                             _rep=responses[REPEAT].astype(bool))
    grouped = frame.groupby(PARTICIPANT, sort=True)
    vigilance = frame[frame["_rep"] & (frame[KIND] == VIGILANCE)].groupby(PARTICIPANT)["_resp"]
    firsts = frame[~frame["_rep"]].groupby(PARTICIPANT)["_resp"]
    targets = frame[frame["_rep"] & (frame[KIND] == TARGET)].groupby(PARTICIPANT)["_resp"]
    table = pd.DataFrame({"n_trials": grouped.size()})
    table["vigilance_repeats"] = vigilance.size().reindex(table.index).fillna(0).astype(int)
    table["vigilance_miss_rate"] = (1.0 - vigilance.mean()).reindex(table.index)
    table["false_alarm_rate"] = firsts.mean().reindex(table.index)
    table["hit_rate"] = targets.mean().reindex(table.index)
    if RT_MS in frame:
        presses = frame[frame["_resp"] > 0]
        table["median_rt_ms"] = (pd.to_numeric(presses[RT_MS], errors="coerce")
                                 .groupby(presses[PARTICIPANT]).median().reindex(table.index))
    else:
        table["median_rt_ms"] = np.nan
    rules = [(f"vigilance misses > {max_vigilance_miss:g}",
              table["vigilance_miss_rate"].to_numpy() > max_vigilance_miss),
             (f"false alarms > {max_false_alarm:g}",
              table["false_alarm_rate"].to_numpy() > max_false_alarm),
             (f"median response time < {min_median_rt_ms:g} ms",
              table["median_rt_ms"].to_numpy() < min_median_rt_ms)]
    table["flagged"] = np.logical_or.reduce([on for _, on in rules])
    table["reason"] = [", ".join(reason for (reason, _), on in zip(rules, row, strict=True) if on)
                       for row in zip(*(on for _, on in rules), strict=True)]
    return table.reset_index()


def drop_flagged(responses: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """The responses of the participants ``flags`` does not flag (:func:`participant_flags`)."""
    flagged = set(flags.loc[flags["flagged"], PARTICIPANT])
    return responses[~responses[PARTICIPANT].isin(flagged)]

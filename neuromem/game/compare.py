"""Do engineered images get remembered more than their base twins? The closing experiment.

A study pairs each engineered image (fine-tuned LoRA, guided or enhanced) with its base twin
made from the same prompt and seed (``pair``). From the target repeats of a response record
(:mod:`neuromem.game.scoring`) this module estimates the effect of the condition three ways:

- a mixed-effects logistic regression ``hit ~ condition`` with random intercepts for the
  participant, the image and the pair (:func:`mixed_logit`);
- a paired sign-flip permutation test on the per-pair hit-rate differences
  (:func:`paired_permutation_test`);
- the mean paired difference in hit rate with a seeded BCa bootstrap interval and Cohen's
  ``d_z`` (:func:`compare_conditions`).

:func:`simulated_power` plans a study's size by simulating it; :func:`write_comparison_report`
writes the Markdown/HTML report with a figure of the image pairs and their hit rates.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from neuromem.errors import InputError
from neuromem.game.scoring import (
    IMAGE_ID,
    PARTICIPANT,
    RESPONSE,
    check_responses,
    target_repeats,
)

CONDITION = "condition"
PAIR = "pair"
BASE = "base"

#: Default resamples of the permutation test and of the bootstrap interval.
N_PERMUTATIONS = 10_000
N_BOOTSTRAP = 2_000


def hit_trials(responses: pd.DataFrame, images: pd.DataFrame | None = None) -> pd.DataFrame:
    """The target repeats of a response record as model rows.

    Parameters
    ----------
    responses : pandas.DataFrame
        A response record (:mod:`neuromem.game.scoring`); may carry ``condition`` and ``pair``.
    images : pandas.DataFrame or None
        ``image_id``, ``condition``, ``pair`` of the study's images (overrides the record's).

    Returns
    -------
    pandas.DataFrame
        ``participant``, ``image_id``, ``pair``, ``condition`` (str), ``hit`` (0/1), one row per
        target repeat of an image with a condition and a pair.
    """
    check_responses(responses)
    trials = target_repeats(responses)
    if images is not None:
        missing = [c for c in (IMAGE_ID, CONDITION, PAIR) if c not in images.columns]
        if missing:
            raise InputError(f"the image table lacks the columns {missing}")
        trials = trials.drop(columns=[c for c in (CONDITION, PAIR) if c in trials.columns])
        trials = trials.merge(images[[IMAGE_ID, CONDITION, PAIR]].astype(str), on=IMAGE_ID,
                              how="left")
    missing = [c for c in (CONDITION, PAIR) if c not in trials.columns]
    if missing:
        raise InputError(f"comparing conditions needs the columns {missing} in the responses "
                         "or an image table with image_id, condition, pair")
    trials = trials.dropna(subset=[CONDITION, PAIR])
    return pd.DataFrame({PARTICIPANT: trials[PARTICIPANT].astype(str).to_numpy(),
                         IMAGE_ID: trials[IMAGE_ID].astype(str).to_numpy(),
                         PAIR: trials[PAIR].astype(str).to_numpy(),
                         CONDITION: trials[CONDITION].astype(str).to_numpy(),
                         "hit": trials[RESPONSE].astype(int).to_numpy()})


def _engineered(trials: pd.DataFrame, base: str, engineered: str | None) -> str:
    conditions = sorted(set(trials[CONDITION]))
    if base not in conditions:
        raise InputError(f"no target repeat of the base condition {base!r}; conditions: "
                         f"{conditions}")
    others = [c for c in conditions if c != base]
    if engineered is None:
        if len(others) != 1:
            raise InputError(f"name the engineered condition: the study has {others} beside "
                             f"{base!r}")
        return others[0]
    if engineered not in others:
        raise InputError(f"no target repeat of the condition {engineered!r}; conditions: "
                         f"{conditions}")
    return engineered


def pair_differences(trials: pd.DataFrame, base: str, engineered: str) -> pd.DataFrame:
    """Per pair: each twin's hit rate and responses, and the difference (engineered - base).

    Parameters
    ----------
    trials : pandas.DataFrame
        Rows of :func:`hit_trials`.
    base, engineered : str
        The two conditions.

    Returns
    -------
    pandas.DataFrame
        One row per pair with both twins scored (sorted by ``pair``): ``pair``,
        ``image_base``, ``image_engineered``, ``hit_rate_base``, ``hit_rate_engineered``,
        ``n_base``, ``n_engineered``, ``difference``.
    """
    sides = {}
    for name, condition in (("base", base), ("engineered", engineered)):
        rows = trials[trials[CONDITION] == condition].groupby(PAIR)
        sides[name] = pd.DataFrame({f"image_{name}": rows[IMAGE_ID].first(),
                                    f"hit_rate_{name}": rows["hit"].mean(),
                                    f"n_{name}": rows["hit"].size()})
    table = sides["base"].join(sides["engineered"], how="inner").sort_index()
    table["difference"] = table["hit_rate_engineered"] - table["hit_rate_base"]
    table.index.name = PAIR
    return table.reset_index()


@dataclass(frozen=True)
class MixedModel:
    """Condition effect of :func:`mixed_logit` (log-odds of a hit, engineered vs base).

    Attributes
    ----------
    log_odds : float
        Posterior mean of the condition coefficient.
    sd : float
        Its posterior standard deviation.
    ci_low, ci_high : float
        95 % credible interval (the variational posterior is normal: mean ± 1.96 sd).
    odds_ratio : float
        ``exp(log_odds)``.
    random_sd : dict
        Posterior-mean standard deviation of each random intercept (participant, image, pair).
    method : str
        What was fitted.
    """

    log_odds: float
    sd: float
    ci_low: float
    ci_high: float
    odds_ratio: float
    random_sd: dict[str, float]
    method: str


def mixed_logit(trials: pd.DataFrame, base: str, engineered: str) -> MixedModel:
    """Mixed-effects logistic regression ``hit ~ condition`` with crossed random intercepts.

    statsmodels' :class:`~statsmodels.genmod.bayes_mixed_glm.BinomialBayesMixedGLM`, fitted by
    variational Bayes (``fit_vb``): it is statsmodels' one model for a binary outcome with
    crossed random effects (``MixedLM`` is Gaussian; GEE handles a single clustering), and its
    Laplace fit (``fit_map``) fails to converge on designs like this one. Random intercepts:
    participant (some people remember more), image (some images are more memorable) and pair
    (twins share a prompt and seed). Priors are statsmodels' defaults (fixed effects N(0, 2²),
    log random SDs N(0, 1)).

    Parameters
    ----------
    trials : pandas.DataFrame
        Rows of :func:`hit_trials` (only the two conditions are used).
    base, engineered : str
        The reference and the tested condition.

    Returns
    -------
    MixedModel
    """
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

    data = trials[trials[CONDITION].isin([base, engineered])].copy()
    data["engineered"] = (data[CONDITION] == engineered).astype(float)
    random = {"participant": f"0 + C({PARTICIPANT})", "image": f"0 + C({IMAGE_ID})",
              "pair": f"0 + C({PAIR})"}
    model = BinomialBayesMixedGLM.from_formula("hit ~ engineered", random, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = model.fit_vb()
    index = model.exog_names.index("engineered")
    mean, sd = float(fit.fe_mean[index]), float(fit.fe_sd[index])
    return MixedModel(log_odds=mean, sd=sd, ci_low=mean - 1.96 * sd, ci_high=mean + 1.96 * sd,
                      odds_ratio=float(np.exp(mean)),
                      random_sd={name: float(np.exp(v))
                                 for name, v in zip(model.vcp_names, fit.vcp_mean, strict=True)},
                      method="statsmodels BinomialBayesMixedGLM.fit_vb: hit ~ engineered + "
                             "(1|participant) + (1|image) + (1|pair)")


@dataclass(frozen=True)
class Permutation:
    """Paired sign-flip permutation test of :func:`paired_permutation_test`.

    Attributes
    ----------
    mean_difference : float
        Observed mean of the paired differences.
    p_value : float
        Two-sided: the share of sign flips whose ``|mean|`` reaches the observed one.
    n_permutations : int
        Sign flips drawn (``2 ** n`` when the test was exact).
    exact : bool
        Every sign pattern was enumerated.
    """

    mean_difference: float
    p_value: float
    n_permutations: int
    exact: bool


def paired_permutation_test(differences: np.ndarray, *, n_permutations: int = N_PERMUTATIONS,
                            seed: int = 0) -> Permutation:
    """Two-sided paired permutation test of a zero mean difference (random sign flips).

    Under the null hypothesis the condition labels within a pair are exchangeable, so each
    difference keeps its size and takes either sign. With ``2 ** n <= n_permutations`` every
    sign pattern is enumerated (exact p); otherwise ``n_permutations`` seeded random patterns
    are drawn and ``p = (1 + hits) / (1 + n_permutations)`` (never 0).

    Parameters
    ----------
    differences : numpy.ndarray
        ``(n,)`` per-pair differences (engineered - base).
    n_permutations : int
        Random sign patterns (>= 1).
    seed : int
        Seed of the patterns.

    Returns
    -------
    Permutation
    """
    d = np.asarray(differences, dtype=float)
    if d.size < 2 or not np.all(np.isfinite(d)):
        raise InputError(f"a paired test needs at least 2 finite differences, got {d.size}")
    if n_permutations < 1:
        raise InputError(f"n_permutations must be at least 1, got {n_permutations}")
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, observed)
    if 2 ** d.size <= n_permutations:
        bits = (np.arange(2 ** d.size)[:, None] >> np.arange(d.size)[None, :]) & 1
        means = np.abs(((1 - 2 * bits) * d).mean(axis=1))
        return Permutation(float(d.mean()), float(np.mean(means >= observed - tolerance)),
                           int(2 ** d.size), True)
    rng = np.random.default_rng(seed)
    count = 0
    for start in range(0, n_permutations, 4096):
        size = min(4096, n_permutations - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, d.size))
        count += int(np.sum(np.abs((signs * d).mean(axis=1)) >= observed - tolerance))
    return Permutation(float(d.mean()), (1 + count) / (1 + n_permutations), n_permutations,
                       False)


@dataclass(frozen=True)
class Comparison:
    """Everything :func:`compare_conditions` found.

    Attributes
    ----------
    base, engineered : str
        The conditions.
    n_pairs, n_participants, n_trials : int
        Pairs with both twins scored, participants and target repeats used.
    mean_difference : float
        Mean over pairs of the hit-rate difference (engineered - base).
    ci_low, ci_high : float
        95 % BCa bootstrap interval of that mean (resampling pairs, seeded).
    cohens_dz : float
        ``mean / sd`` of the paired differences.
    permutation : Permutation
    mixed : MixedModel or None
        None when not fitted.
    pairs : pandas.DataFrame
        :func:`pair_differences`.
    """

    base: str
    engineered: str
    n_pairs: int
    n_participants: int
    n_trials: int
    mean_difference: float
    ci_low: float
    ci_high: float
    cohens_dz: float
    permutation: Permutation
    mixed: MixedModel | None
    pairs: pd.DataFrame

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (without the pair table)."""
        record = {k: v for k, v in asdict(self).items() if k not in ("pairs",)}
        record["permutation"] = asdict(self.permutation)
        record["mixed"] = asdict(self.mixed) if self.mixed else None
        return record


def compare_conditions(trials: pd.DataFrame, *, base: str = BASE, engineered: str | None = None,
                       n_permutations: int = N_PERMUTATIONS, n_bootstrap: int = N_BOOTSTRAP,
                       seed: int = 0, mixed: bool = True) -> Comparison:
    """Compare an engineered condition with its base twins (see the module docstring).

    Parameters
    ----------
    trials : pandas.DataFrame
        Rows of :func:`hit_trials`.
    base : str
        Reference condition.
    engineered : str or None
        Tested condition; None: the only other condition.
    n_permutations : int
        Sign flips of the permutation test.
    n_bootstrap : int
        Resamples of the BCa interval of the mean difference.
    seed : int
        Seed of the permutation test and the bootstrap.
    mixed : bool
        Fit the mixed-effects model (a few seconds).

    Returns
    -------
    Comparison
    """
    engineered = _engineered(trials, base, engineered)
    pairs = pair_differences(trials, base, engineered)
    if len(pairs) < 2:
        raise InputError(f"{len(pairs)} pair(s) have target repeats of both {base!r} and "
                         f"{engineered!r}; a paired comparison needs at least 2")
    d = pairs["difference"].to_numpy()
    permutation = paired_permutation_test(d, n_permutations=n_permutations, seed=seed)
    if np.ptp(d) > 0:
        interval = stats.bootstrap((d,), np.mean, n_resamples=n_bootstrap, method="BCa",
                                   random_state=np.random.default_rng(seed)).confidence_interval
        low, high = float(interval.low), float(interval.high)
    else:
        low = high = float(d[0])
    sd = float(np.std(d, ddof=1))
    used = trials[trials[CONDITION].isin([base, engineered]) & trials[PAIR].isin(pairs[PAIR])]
    return Comparison(
        base=base, engineered=engineered, n_pairs=len(pairs),
        n_participants=int(used[PARTICIPANT].nunique()), n_trials=len(used),
        mean_difference=float(d.mean()), ci_low=low, ci_high=high,
        cohens_dz=float(d.mean() / sd) if sd > 0 else float("nan"),
        permutation=permutation, mixed=mixed_logit(used, base, engineered) if mixed else None,
        pairs=pairs)


@dataclass(frozen=True)
class Power:
    """Simulated power of a paired study (:func:`simulated_power`).

    Attributes
    ----------
    power : float
        Share of simulated studies whose permutation test had ``p < alpha``.
    ci_low, ci_high : float
        95 % Clopper-Pearson interval of that share.
    n_simulations : int
    log_odds : float
        The simulated condition effect on the log-odds scale.
    """

    power: float
    ci_low: float
    ci_high: float
    n_simulations: int
    log_odds: float


def simulated_power(effect: float, n_participants: int, n_pairs: int, *,
                    base_rate: float = 0.6, pair_sd: float = 0.6, image_sd: float = 0.3,
                    participant_sd: float = 0.5, alpha: float = 0.05,
                    n_simulations: int = 200, n_permutations: int = 1000,
                    seed: int = 0) -> Power:
    """Power of the paired permutation test for a hit-rate effect, by simulating studies.

    Each simulated study draws, on the log-odds scale, a random effect per pair
    (``pair_sd``), per image (``image_sd``: twins differ beyond the condition) and per
    participant (``participant_sd``), and adds ``logit(base_rate + effect) - logit(base_rate)``
    for engineered images. Every participant sees one twin of every pair as a target,
    engineered for half the pairs (alternating, so each twin is seen by half the participants),
    and detects its repeat with the model's probability. The study is analysed as
    :func:`compare_conditions` does (per-pair hit-rate differences, sign-flip test).

    Parameters
    ----------
    effect : float
        Hit-rate difference (engineered - base) at the base rate, e.g. 0.05.
    n_participants : int
        Participants (>= 2).
    n_pairs : int
        Image pairs (>= 2).
    base_rate : float
        Typical hit rate of base images, in (0, 1).
    pair_sd, image_sd, participant_sd : float
        Random-effect SDs, log-odds.
    alpha : float
        Significance level.
    n_simulations : int
        Simulated studies.
    n_permutations : int
        Sign flips per test.
    seed : int
        Seed of everything.

    Returns
    -------
    Power
    """
    if not 0 < base_rate < 1 or not 0 < base_rate + effect < 1:
        raise InputError(f"base rate {base_rate} and effect {effect} must keep hit rates in "
                         "(0, 1)")
    if n_participants < 2 or n_pairs < 2:
        raise InputError(f"a paired study needs at least 2 participants and 2 pairs, got "
                         f"{n_participants} and {n_pairs}")
    if n_simulations < 1:
        raise InputError(f"n_simulations must be at least 1, got {n_simulations}")
    log_odds = float(special.logit(base_rate + effect) - special.logit(base_rate))
    rng = np.random.default_rng(seed)
    participant, pair = np.meshgrid(np.arange(n_participants), np.arange(n_pairs),
                                    indexing="ij")
    engineered_pk = (participant + pair) % 2 == 1
    significant = 0
    for _ in range(n_simulations):
        eta_k2 = (special.logit(base_rate) + rng.normal(0, pair_sd, (n_pairs, 1))
                  + rng.normal(0, image_sd, (n_pairs, 2)) + np.array([0.0, log_odds]))
        eta_pk = (eta_k2[pair, engineered_pk.astype(int)]
                  + rng.normal(0, participant_sd, (n_participants, 1)))
        hits_pk = rng.random(eta_pk.shape) < special.expit(eta_pk)
        rate_eng = (hits_pk & engineered_pk).sum(0) / np.maximum(engineered_pk.sum(0), 1)
        rate_base = (hits_pk & ~engineered_pk).sum(0) / np.maximum((~engineered_pk).sum(0), 1)
        test = paired_permutation_test(rate_eng - rate_base, n_permutations=n_permutations,
                                       seed=int(rng.integers(2 ** 31)))
        significant += test.p_value < alpha
    interval = stats.binomtest(significant, n_simulations).proportion_ci(0.95)
    return Power(power=significant / n_simulations, ci_low=float(interval.low),
                 ci_high=float(interval.high), n_simulations=n_simulations, log_odds=log_odds)


def plot_pairs(pairs: pd.DataFrame, sources: Mapping[str, str], path: str | Path, *,
               labels: tuple[str, str] = ("base", "engineered"), max_pairs: int = 12) -> Path:
    """Figure of the image pairs: base and engineered twin side by side with their hit rates.

    Parameters
    ----------
    pairs : pandas.DataFrame
        :func:`pair_differences` rows; the ``max_pairs`` with the largest ``|difference|`` are
        drawn, largest first.
    sources : mapping of str to str
        ``image_id`` → image file (local path or URI); an image without one is drawn as its id.
    path : str or Path
        PNG to write (local).
    labels : tuple of str
        Names of the base and the engineered condition in the titles.
    max_pairs : int
        Rows of the figure.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    from neuromem.runtime.storage import read_bytes

    shown = pairs.reindex(pairs["difference"].abs().sort_values(ascending=False).index)
    shown = shown.head(max_pairs)
    fig, axes = plt.subplots(len(shown), 2, figsize=(5.0, 2.5 * len(shown)), squeeze=False)
    for row, record in enumerate(shown.itertuples(index=False)):
        for col, (side, label) in enumerate(zip(("base", "engineered"), labels, strict=True)):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            image_id = getattr(record, f"image_{side}")
            source = sources.get(image_id)
            if source:
                ax.imshow(Image.open(io.BytesIO(read_bytes(source))).convert("RGB"))
            else:
                ax.text(0.5, 0.5, image_id, ha="center", va="center", fontsize=8,
                        transform=ax.transAxes)
            rate, n = getattr(record, f"hit_rate_{side}"), getattr(record, f"n_{side}")
            ax.set_title(f"{label}: hit {rate:.2f} (n={n})", fontsize=8)
        axes[row, 0].set_ylabel(f"{record.pair}\nΔ {record.difference:+.2f}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_comparison_report(result: Comparison, out: str, *,
                            sources: Mapping[str, str] | None = None) -> None:
    """Write ``comparison.json``, ``pairs.parquet``, ``pairs.png``, ``report.md`` and ``report.html``.

    Parameters
    ----------
    result : Comparison
    out : str
        Output folder (local path or URI; written through a local staging folder).
    sources : mapping of str to str or None
        ``image_id`` → image file for the figure of the pairs.
    """
    import pyarrow as pa

    from neuromem.analysis.report import Block, write_report
    from neuromem.runtime.storage import staged_output, write_json, write_parquet

    p = result.permutation
    lines = [
        f"{result.n_pairs} pairs, {result.n_participants} participants, {result.n_trials} "
        f"target repeats. Mean hit-rate difference ({result.engineered} - {result.base}): "
        f"{result.mean_difference:+.3f} (95 % BCa CI {result.ci_low:+.3f} to "
        f"{result.ci_high:+.3f}); Cohen's d_z {result.cohens_dz:.2f}.",
        f"Paired sign-flip permutation test: p = {p.p_value:.4g} "
        f"({'exact' if p.exact else f'{p.n_permutations} random sign flips'}).",
    ]
    if result.mixed is not None:
        m = result.mixed
        lines.append(f"Mixed-effects logistic regression ({m.method}): log-odds "
                     f"{m.log_odds:+.3f} ± {m.sd:.3f} (95 % CrI {m.ci_low:+.3f} to "
                     f"{m.ci_high:+.3f}), odds ratio {m.odds_ratio:.2f}; random-intercept "
                     "SDs " + ", ".join(f"{k} {v:.2f}" for k, v in m.random_sd.items()) + ".")
    with staged_output(out) as folder:
        plot_pairs(result.pairs, sources or {}, folder / "pairs.png",
                   labels=(result.base, result.engineered))
        blocks = [Block("h1", f"{result.engineered} vs {result.base}: human memorability"),
                  *(Block("p", line) for line in lines),
                  Block("img", "pairs.png", "image pairs, largest differences first"),
                  Block("h2", "Pairs"), Block("table", result.pairs)]
        write_report(folder, blocks, title=f"{result.engineered} vs {result.base}")
        write_json(folder / "comparison.json", result.to_dict())
        write_parquet(folder / "pairs.parquet", pa.Table.from_pandas(result.pairs,
                                                                     preserve_index=False))

"""Response records of simulated participants with known per-image memorability (test helper).

Not a game: rows are drawn directly in the record format of :mod:`neuromem.game.scoring`, so the
statistics can be checked against the truth that generated them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def simulate_records(memorability: np.ndarray, n_participants: int, *, seed: int = 0,
                     target_fraction: float = 1.0, lags: tuple[int, int] = (91, 109),
                     alpha: float = 0.0, reference_lag: float = 100.0,
                     false_alarm: float = 0.05, vigilance_hit: float = 0.95,
                     n_vigilance: int = 10, n_fillers: int = 20,
                     participant_prefix: str = "p") -> pd.DataFrame:
    """Draw a response record.

    Each participant sees each image as a target with probability ``target_fraction`` (first
    showing, then a repeat after a lag uniform in ``lags``); the repeat is detected with
    probability ``clip(m_i + alpha log(lag / T), 0, 1)``; every first showing draws a false
    alarm with probability ``false_alarm``; ``n_vigilance`` vigilance pairs (detected with
    ``vigilance_hit``) and ``n_fillers`` fillers are added.
    """
    rng = np.random.default_rng(seed)
    m = np.asarray(memorability, dtype=float)
    rows = []
    for p in range(n_participants):
        who = f"{participant_prefix}{p:03d}"
        for i in np.flatnonzero(rng.random(len(m)) < target_fraction):
            lag = int(rng.integers(lags[0], lags[1] + 1))
            p_hit = float(np.clip(m[i] + alpha * np.log(lag / reference_lag), 0.0, 1.0))
            image = f"img{i:04d}"
            rows.append((who, image, "target", False, np.nan, rng.random() < false_alarm))
            rows.append((who, image, "target", True, float(lag), rng.random() < p_hit))
        for v in range(n_vigilance):
            image = f"vig{p:03d}_{v:02d}"
            rows.append((who, image, "vigilance", False, np.nan, rng.random() < false_alarm))
            rows.append((who, image, "vigilance", True, float(rng.integers(1, 8)),
                         rng.random() < vigilance_hit))
        for f in range(n_fillers):
            rows.append((who, f"fill{p:03d}_{f:02d}", "filler", False, np.nan,
                         rng.random() < false_alarm))
    return pd.DataFrame(rows, columns=["participant", "image_id", "kind", "repeat", "lag",
                                       "response"])


def simulate_paired_records(n_participants: int, n_pairs: int, *, log_odds: float, seed: int = 0,
                            base_logit: float = 0.4, pair_sd: float = 0.6,
                            participant_sd: float = 0.4) -> pd.DataFrame:
    """A paired study: every participant sees one twin of every pair (alternating conditions).

    Hit log-odds: ``base_logit`` + pair effect + participant effect (+ ``log_odds`` for the
    ``lora`` twin). Rows carry ``condition`` and ``pair``.
    """
    rng = np.random.default_rng(seed)
    pair_effect = rng.normal(0, pair_sd, n_pairs)
    person = rng.normal(0, participant_sd, n_participants)
    rows = []
    for p in range(n_participants):
        for k in range(n_pairs):
            lora = (p + k) % 2 == 1
            eta = base_logit + pair_effect[k] + person[p] + (log_odds if lora else 0.0)
            condition = "lora" if lora else "base"
            image = f"{condition}_{k:03d}"
            hit = rng.random() < 1 / (1 + np.exp(-eta))
            rows.append((f"p{p:03d}", image, "target", False, np.nan, False, condition,
                         f"k{k:03d}"))
            rows.append((f"p{p:03d}", image, "target", True, 100.0, hit, condition,
                         f"k{k:03d}"))
    return pd.DataFrame(rows, columns=["participant", "image_id", "kind", "repeat", "lag",
                                       "response", "condition", "pair"])

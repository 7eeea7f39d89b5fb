"""Simulated participants with known per-image memorability, played through the real HTTP API.

A simulated participant remembers like the model behind LaMem's scores: at the repeat of an
image seen ``lag`` positions earlier it responds with probability

- ``vigilance_hit`` for short lags (``lag <= short_lag``: the vigilance repeats);
- ``sigmoid(logit(m_i) + b)`` otherwise, where ``m_i`` is the image's true memorability and
  ``b ~ N(0, noise)`` the participant's own bias;

and false-alarms at first showings with probability ``false_alarm``. It knows nothing of the
sequence but what the page shows it (image URLs), so it exercises exactly what a browser does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from urllib.parse import unquote

import numpy as np
from scipy.special import expit, logit

from neuromem.errors import InputError


@dataclass(frozen=True)
class Behaviour:
    """How simulated participants remember and err."""

    noise: float = 0.5
    vigilance_hit: float = 0.95
    false_alarm: float = 0.05
    short_lag: int = 7
    rt_fraction: tuple[float, float] = (0.3, 0.9)
    """A press comes at a uniform fraction of the response window (image + gap) in this range."""


def play_participant(base_url: str, participant: str, memorability: Mapping[str, float],
                     behaviour: Behaviour, seed: int, *, platform: str = "prolific") -> dict:
    """Play one whole session; returns ``{participant, trials, completion_code}``.

    Raises
    ------
    InputError
        When the server refuses the session or a response.
    """
    import httpx

    rng = np.random.default_rng(seed)
    bias = rng.normal(0.0, behaviour.noise)
    seen: dict[str, int] = {}
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        reply = client.post("/api/session", json={"participant": participant,
                                                  "platform": platform})
        if reply.status_code != 201:
            raise InputError(f"session for {participant} refused: {reply.status_code} "
                             f"{reply.text[:200]}")
        session = reply.json()
        token, window_ms = session["token"], session["image_ms"] + session["gap_ms"]
        trial = client.get("/api/next", params={"token": token}).json()
        n = 0
        while not trial["done"]:
            image_id = unquote(trial["image"].removeprefix("/images/"))
            if image_id in seen:
                lag = trial["position"] - seen[image_id]
                p = (behaviour.vigilance_hit if lag <= behaviour.short_lag else
                     float(expit(logit(np.clip(memorability.get(image_id, 0.5), 1e-3, 1 - 1e-3))
                                 + bias)))
            else:
                p = behaviour.false_alarm
            seen[image_id] = trial["position"]
            responded = bool(rng.random() < p)
            reply = client.post("/api/response", json={
                "token": token, "position": trial["position"], "responded": responded,
                "rt_ms": float(rng.uniform(*behaviour.rt_fraction) * window_ms)
                if responded else None})
            if reply.status_code != 200:
                raise InputError(f"response of {participant} refused: {reply.status_code} "
                                 f"{reply.text[:200]}")
            trial, n = reply.json(), n + 1
    return {"participant": participant, "trials": n, "completion_code": trial["completion_code"]}


def simulate(base_url: str, memorability: Mapping[str, float], n_participants: int, *,
             behaviour: Behaviour = Behaviour(), concurrency: int = 50, seed: int = 0,
             prefix: str = "sim", progress: bool = True) -> list[dict]:
    """``n_participants`` simulated participants at once (``concurrency`` threads).

    Returns
    -------
    list of dict
        One :func:`play_participant` record each, in participant order.
    """
    if n_participants < 1 or concurrency < 1:
        raise InputError("simulate needs at least one participant and one thread")
    from neuromem.runtime.progress import track

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    ids = [f"{prefix}-{seed}-{k:04d}" for k in range(n_participants)]
    with ThreadPoolExecutor(min(concurrency, n_participants)) as pool:
        futures = [pool.submit(play_participant, base_url, pid, memorability, behaviour,
                               seed * 100_003 + k) for k, pid in enumerate(ids)]
        for _ in track(as_completed(futures), total=len(futures), desc="simulated participants",
                       unit="participant", enabled=progress):
            pass
        return [future.result() for future in futures]

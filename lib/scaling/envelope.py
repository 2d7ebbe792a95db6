"""Chinchilla's Approach 1 and the extrapolation check of Approaches 2 and 3.

- ``fit_envelope(curves)``: Approach 1 (Hoffmann et al. 2022, sec. 3.1): over the training
  curves of every run (loss against training FLOPs), the lower envelope gives, at each FLOP
  count, the run (hence the size N and its tokens D) that reached the lowest loss; power laws
  N*(C) = k_n C^a and D*(C) = k_d C^b through the envelope's points. A point in the middle of
  a cosine run sits above what a run of that length would reach, so the envelope is exact only
  where it is made of runs' final points; an IsoFLOP sweep trains every size for several
  lengths, which is what makes its curves usable here. The interval resamples whole runs.
- ``extrapolation_check(budget, N, loss, D)``: fit Approaches 2 and 3 without the largest
  budget, predict its N* and its runs' losses, and compare with what its held-out runs
  measured, each error with its interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lib.core import (
    check_confidence,
    check_int,
    check_positive,
    check_positive_array,
    check_same_length,
    check_seed,
    t_interval,
)
from lib.scaling.fit import AllocationLaws, fit_isoflop, fit_parametric


@dataclass
class EnvelopeFit(AllocationLaws):
    """Approach 1: N*(C) = 10^log10_k_n C^a and D*(C) = 10^log10_k_d C^b from the lower
    envelope of the training curves.

    ``envelope``: one row per FLOP grid point (flops, loss, n_opt, d_opt, run_id of the run on
    the envelope). ``bootstrap``: one row per resample of the runs (a, b, log10_k_n,
    log10_k_d).
    """

    fitter = "fit_envelope"

    a: float
    log10_k_n: float
    b: float
    log10_k_d: float
    envelope: pd.DataFrame
    bootstrap: pd.DataFrame | None = field(default=None, repr=False)


def _line(x, y):
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def _envelope_fit(L, log_c, log_n, log_fpt):
    """Argmin over runs (rows of L [runs, grid]) at each grid column covered by a run; the
    power laws through the envelope's points. Returns (a, kn, b, kd, columns, winners)."""
    cols = np.flatnonzero(np.isfinite(L).any(axis=0))
    win = np.nanargmin(L[:, cols], axis=0)
    lc = log_c[cols] / np.log(10)
    ln = log_n[win] / np.log(10)
    ld = (log_c[cols] - log_fpt[win]) / np.log(10)
    if np.unique(ln).size < 2:  # one size wins everywhere: no slope to fit
        return np.nan, np.nan, np.nan, np.nan, cols, win
    a, kn = _line(lc, ln)
    b, kd = _line(lc, ld)
    return a, kn, b, kd, cols, win


def fit_envelope(curves: pd.DataFrame, *, loss: str = "loss", n_grid: int = 40, flops_range=None,
                 n_bootstrap: int = 200, seed: int = 0) -> EnvelopeFit:
    """Approach 1 on training curves: ``curves`` has one row per logged point with columns
    ``run_id``, ``n_params``, ``flops`` (training FLOPs spent so far), ``tokens`` (tokens so
    far) and ``loss`` (nats/token; e.g. the smoothed training loss).

    Each run's loss is interpolated (in log FLOPs) onto ``n_grid`` log-spaced FLOP counts over
    ``flops_range`` (default: from the smallest to the largest final FLOPs of the runs, where
    the IsoFLOP budgets lie); outside a run's own range it does not count. At each grid point
    the lowest run is the envelope; lines through (log C, log N) and (log C, log D) of the
    envelope give a and b. ``n_bootstrap`` resamples of the runs (with replacement, seeded by
    ``seed``) give the interval; a resample in which a single size wins everywhere has no
    slope and is reported as NaN (``ci`` skips it).
    """
    if not isinstance(curves, pd.DataFrame):
        raise ValueError(f"curves must be a DataFrame, got {type(curves).__name__}")
    needed = ["run_id", "n_params", "flops", "tokens", loss]
    missing = [c for c in needed if c not in curves]
    if missing:
        raise ValueError(f"curves lacks the columns {missing}; it has {list(curves.columns)}")
    n_grid = check_int("n_grid", n_grid, 2)
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, 0)
    seed = check_seed("seed", seed)
    check_positive_array("curves.flops", curves["flops"])
    check_positive_array("curves.tokens", curves["tokens"])
    check_positive_array(f"curves.{loss}", curves[loss])
    runs = list(dict.fromkeys(curves["run_id"]))
    if len(runs) < 2:
        raise ValueError(f"fit_envelope needs the curves of at least 2 runs, got {len(runs)}")
    by_run = {r: g.sort_values("flops") for r, g in curves.groupby("run_id", sort=False)}
    finals = np.array([by_run[r]["flops"].iloc[-1] for r in runs])
    if flops_range is None:
        lo, hi = finals.min(), finals.max()
    else:
        lo, hi = (check_positive(f"flops_range[{i}]", v) for i, v in enumerate(flops_range))
    if not hi > lo:
        raise ValueError(f"flops_range must span a positive range, got {lo:.3g} .. {hi:.3g}")
    log_c = np.linspace(np.log(lo), np.log(hi), n_grid)
    L = np.full((len(runs), n_grid), np.nan)
    log_n, log_fpt = np.empty(len(runs)), np.empty(len(runs))
    for i, r in enumerate(runs):
        g = by_run[r]
        x = np.log(g["flops"].to_numpy(float))
        inside = (log_c >= x[0]) & (log_c <= x[-1])
        L[i, inside] = np.interp(log_c[inside], x, g[loss].to_numpy(float))
        log_n[i] = np.log(float(g["n_params"].iloc[0]))
        log_fpt[i] = np.log(float(g["flops"].iloc[-1]) / float(g["tokens"].iloc[-1]))
    a, kn, b, kd, cols, win = _envelope_fit(L, log_c, log_n, log_fpt)
    env = pd.DataFrame({"flops": np.exp(log_c[cols]), "loss": L[win, cols], "n_opt": np.exp(log_n[win]),
                        "d_opt": np.exp(log_c[cols] - log_fpt[win]),
                        "run_id": [runs[w] for w in win]})
    fit = EnvelopeFit(a=a, log10_k_n=kn, b=b, log10_k_d=kd, envelope=env)
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        rows = []
        for _ in range(n_bootstrap):
            idx = rng.integers(0, len(runs), len(runs))
            ba, bkn, bb, bkd, _, _ = _envelope_fit(L[idx], log_c, log_n[idx], log_fpt[idx])
            rows.append({"a": ba, "b": bb, "log10_k_n": bkn, "log10_k_d": bkd})
        fit.bootstrap = pd.DataFrame(rows)
    return fit


def extrapolation_check(budget, N, loss, D=None, *, n_bootstrap: int = 1000, seed: int = 0,
                        level: float = 0.95) -> pd.DataFrame:
    """Fit Approach 2 and Approach 3 on every budget but the largest, predict the largest, and
    compare with its held-out runs (one entry per run: ``budget`` FLOPs, ``N`` parameters,
    ``loss`` nats/token, ``D`` tokens, default C / (6 N)).

    Rows: ``log10 N*`` (Approach 2's power law at the held-out budget against the vertex of the
    held-out runs' own parabola; the interval combines both bootstraps, drawn independently)
    and ``loss`` (Approach 3's predicted loss of each held-out run against its measured loss;
    the mean error over the held-out runs with its Student-t interval). Columns: quantity,
    predicted, observed, error (predicted - observed), low, high (of the error), n_heldout.
    Needs at least 2 budgets besides the held-out one.
    """
    budget, N, loss = (check_positive_array(k, v) for k, v in (("budget", budget), ("N", N), ("loss", loss)))
    check_same_length(budget=budget, N=N, loss=loss)
    D = budget / (6.0 * N) if D is None else check_positive_array("D", D)
    check_same_length(budget=budget, D=D)
    level = check_confidence(level, "level")
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, 1)
    seed = check_seed("seed", seed)
    levels = np.unique(budget)
    if levels.size < 3:
        raise ValueError(f"extrapolation_check needs at least 3 budgets (2 to fit, 1 held out), got {levels.size}")
    c_max = levels[-1]
    train, held = budget < c_max, budget == c_max
    iso = fit_isoflop(budget[train], N[train], loss[train], D=D[train], n_bootstrap=n_bootstrap, seed=seed)
    full = fit_isoflop(budget, N, loss, D=D, n_bootstrap=n_bootstrap, seed=seed + 1)
    pred_draws = iso.uncertainty.predict([c_max])["log10_n_opt"].to_numpy()
    obs_draws = full.uncertainty.log10_n_opt[:, -1]
    pred = iso.log10_k_n + iso.a * np.log10(c_max)
    obs = float(np.log10(full.vertices["n_opt"].iloc[-1]))
    lo, hi = np.quantile(pred_draws - obs_draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    rows = [{"quantity": "log10 N*", "predicted": pred, "observed": obs, "error": pred - obs,
             "low": float(lo), "high": float(hi), "n_heldout": int(held.sum())}]
    par = fit_parametric(N[train], D[train], loss[train])
    err = par.predict(N[held], D[held]) - loss[held]
    mean, half = t_interval(err, level)
    rows.append({"quantity": "loss", "predicted": float(par.predict(N[held], D[held]).mean()),
                 "observed": float(loss[held].mean()), "error": mean, "low": mean - half,
                 "high": mean + half, "n_heldout": int(held.sum())})
    return pd.DataFrame(rows)

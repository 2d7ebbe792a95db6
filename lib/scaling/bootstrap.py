"""Approach-2 uncertainty that includes seed noise: a parametric bootstrap of IsoFLOP sweeps.

Resampling the 4-7 runs of a budget (with replacement) cannot work: a third of the resamples
at 4 sizes hold fewer than 3 distinct sizes, and the spread of a handful of single-seed
points says little about the seed noise. Instead, ``isoflop_bootstrap`` keeps the design (the
sampled sizes and the number of seeds at each) and redraws the losses:

1. per budget, a least-squares parabola of loss in x = log N through every run (replicate
   seeds of one size are separate runs, so a size with r seeds weighs r times);
2. the noise sigma (nats) from the residuals of all runs against their budget's parabola,
   ``dof = runs - 3 x budgets`` degrees of freedom (``noise="residual"``, the default: seed
   noise plus the parabola's lack of fit, the conservative choice), or from the seed
   replicates alone (``noise="replicates"``: the measured seed-to-seed spread, pure error), or
   given (``sigma=``);
3. each draw takes its own sigma_b^2 = s^2 dof / chi2(dof) (the uncertainty of the noise
   estimate itself, so few degrees of freedom give wider, t-like intervals) and redraws every
   size's mean loss as parabola + N(0, sigma_b^2 / r);
4. the redrawn means are refit (vertex per budget in log N and in log D), and the lines
   through (log C, log N*) and (log C, log D*) give the draw's a, b and prefactors.

Everything is one matrix product per budget, vectorised over draws (thousands of draws cost
milliseconds). A redrawn parabola that opens downwards has no minimum: its vertex is the
sampled size with the lowest redrawn loss (the argmin over the sampled range), and the share
of such draws is reported (``degenerate``); ``fit_isoflop`` warns when it exceeds 2.5%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lib.core import (
    check_choice,
    check_int,
    check_positive,
    check_positive_array,
    check_same_length,
    check_seed,
)

NOISE_SOURCES = ("residual", "replicates")


@dataclass
class IsoFLOPBootstrap:
    """The draws of ``isoflop_bootstrap``.

    ``draws``: one row per draw (a, b, log10_k_n, log10_k_d). ``log10_n_opt``,
    ``log10_d_opt``, ``loss_min``: [draws, budgets] arrays of the redrawn vertices (budgets in
    ascending order, ``flops``). ``sigma``: the noise estimate (nats/token) with ``dof``
    degrees of freedom from ``noise``; ``degenerate``: the share of (draw, budget) parabolas
    that opened downwards.
    """

    draws: pd.DataFrame
    flops: np.ndarray
    log10_n_opt: np.ndarray
    log10_d_opt: np.ndarray
    loss_min: np.ndarray
    sigma: float
    dof: int
    noise: str
    degenerate: float

    def vertex_summary(self, level: float = 0.95) -> pd.DataFrame:
        """Per budget: ``log10_n_opt_std`` (robust std of the vertex in dex: half the 16-84%
        range, which a few runaway draws cannot inflate), the percentile interval
        ``log10_n_opt_low`` / ``log10_n_opt_high`` at ``level``, and ``loss_min_std``."""
        lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
        q = np.quantile(self.log10_n_opt, [0.16, 0.84, lo, hi], axis=0)
        ql = np.quantile(self.loss_min, [0.16, 0.84], axis=0)
        return pd.DataFrame({"flops": self.flops, "log10_n_opt_std": (q[1] - q[0]) / 2,
                             "log10_n_opt_low": q[2], "log10_n_opt_high": q[3],
                             "loss_min_std": (ql[1] - ql[0]) / 2})

    def predict(self, C) -> pd.DataFrame:
        """Per draw, log10 N* and log10 D* at each budget ``C`` from the draw's power laws:
        columns ``C``, ``draw``, ``log10_n_opt``, ``log10_d_opt`` (for intervals of a
        prediction, e.g. at a held-out budget)."""
        C = check_positive_array("C", C)
        lc = np.log10(C)[None, :]
        d = self.draws
        n = d["log10_k_n"].to_numpy()[:, None] + d["a"].to_numpy()[:, None] * lc
        dd = d["log10_k_d"].to_numpy()[:, None] + d["b"].to_numpy()[:, None] * lc
        draws = np.repeat(np.arange(len(d)), C.size)
        return pd.DataFrame({"C": np.tile(C, len(d)), "draw": draws, "log10_n_opt": n.ravel(),
                             "log10_d_opt": dd.ravel()})


def _design(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The weighted least-squares map P [3, k]: coefficients (c2, c1, c0) = P @ y."""
    X = np.stack([x * x, x, np.ones_like(x)], axis=1)
    XtW = X.T * w
    return np.linalg.solve(XtW @ X, XtW)


def _vertices(P: np.ndarray, x: np.ndarray, Y: np.ndarray):
    """Vertex x, its loss, and a downward flag of the parabolas P @ Y[..., k] (vectorised over
    leading axes). A parabola opening downwards gets the sampled x of lowest Y instead."""
    c = Y @ P.T  # [..., 3]
    c2, c1, c0 = c[..., 0], c[..., 1], c[..., 2]
    down = c2 <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        xv = np.where(down, 0.0, -c1 / (2 * np.where(down, 1.0, c2)))
    xv = np.where(down, x[np.argmin(Y, axis=-1)], xv)
    return xv, c2 * xv * xv + c1 * xv + c0, down


def _line_map(log10_c: np.ndarray) -> np.ndarray:
    """Least-squares map [2, budgets]: (slope, intercept) = M @ log10 y."""
    X = np.stack([log10_c, np.ones_like(log10_c)], axis=1)
    return np.linalg.pinv(X)


def isoflop_bootstrap(budget, N, loss, D=None, *, n_bootstrap: int = 1000, seed: int = 0,
                      noise: str = "residual", sigma: float | None = None) -> IsoFLOPBootstrap:
    """Parametric bootstrap of Approach 2 from the sweep's measured noise (see the module doc).

    ``budget`` FLOPs, ``N`` parameters, ``loss`` nats/token, one entry per run (several seeds
    of one (budget, N) are replicates); ``D`` tokens (default C / (6 N)). ``noise``:
    ``"residual"`` or ``"replicates"``; ``sigma`` (nats) overrides both with a known noise
    (its draws then use that sigma exactly). Raises ``ValueError`` when the noise cannot be
    estimated (no residual degrees of freedom, or no replicates with ``noise="replicates"``).
    """
    budget, N, loss = (check_positive_array(k, v) for k, v in (("budget", budget), ("N", N), ("loss", loss)))
    check_same_length(budget=budget, N=N, loss=loss)
    D = budget / (6.0 * N) if D is None else check_positive_array("D", D)
    check_same_length(budget=budget, D=D)
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, 1)
    seed = check_seed("seed", seed)
    noise = check_choice("noise", noise, NOISE_SOURCES)
    if sigma is not None:
        sigma = check_positive("sigma", sigma, allow_zero=True)
    levels = np.unique(budget)
    if levels.size < 2:
        raise ValueError("isoflop_bootstrap needs at least 2 distinct budgets for a power law")
    groups, ss_res, n_res, ss_pure, n_pure = [], 0.0, 0, 0.0, 0
    for c in levels:
        m = budget == c
        sizes, inv, counts = np.unique(N[m], return_inverse=True, return_counts=True)
        if sizes.size < 3:
            raise ValueError(f"budget {c:.3g} has {sizes.size} distinct sizes; a parabola needs at least 3")
        means = np.bincount(inv, weights=loss[m]) / counts
        x = np.log(sizes)
        xd = np.bincount(inv, weights=np.log(D[m])) / counts
        P = _design(x, counts.astype(float))
        Pd = _design(xd, counts.astype(float))
        fitted = np.polyval(P @ means, x)
        ss_res += float(((loss[m] - fitted[inv]) ** 2).sum())
        n_res += int(m.sum()) - 3
        ss_pure += float(((loss[m] - means[inv]) ** 2).sum())
        n_pure += int(m.sum()) - sizes.size
        groups.append((x, xd, counts, P, Pd, fitted))
    if sigma is not None:
        s2, dof, source = sigma**2, 0, "given"
    elif noise == "replicates":
        if n_pure < 1:
            raise ValueError("noise='replicates' needs at least one (budget, N) run over 2+ seeds")
        s2, dof, source = ss_pure / n_pure, n_pure, "replicates"
    else:
        if n_res < 1:
            raise ValueError("the noise cannot be estimated: every budget has exactly 3 runs (no "
                             "residual degrees of freedom); add sizes or seeds, or pass sigma")
        s2, dof, source = ss_res / n_res, n_res, "residual"
    rng = np.random.default_rng(seed)
    var = np.full(n_bootstrap, s2) if dof == 0 else s2 * dof / rng.chisquare(dof, n_bootstrap)
    xn, xdv, lmin, down = [], [], [], []
    for x, xd, counts, P, Pd, fitted in groups:
        Y = fitted + np.sqrt(var[:, None] / counts) * rng.standard_normal((n_bootstrap, x.size))
        v, lv, dn = _vertices(P, x, Y)
        vd, _, _ = _vertices(Pd, xd, Y)
        xn.append(v), xdv.append(vd), lmin.append(lv), down.append(dn)
    ln10 = np.log(10.0)
    log10_n, log10_d = np.stack(xn, 1) / ln10, np.stack(xdv, 1) / ln10
    M = _line_map(np.log10(levels))
    an, ad = log10_n @ M.T, log10_d @ M.T
    draws = pd.DataFrame({"a": an[:, 0], "b": ad[:, 0], "log10_k_n": an[:, 1], "log10_k_d": ad[:, 1]})
    return IsoFLOPBootstrap(draws=draws, flops=levels, log10_n_opt=log10_n, log10_d_opt=log10_d,
                            loss_min=np.stack(lmin, 1), sigma=float(np.sqrt(s2)), dof=dof,
                            noise=source, degenerate=float(np.mean(down)))

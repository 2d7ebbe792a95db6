"""Fitting compute-optimal scaling laws: Chinchilla's Approaches 2 and 3, and their tables.

Units throughout: N = parameters (count), D = training tokens (count), C = training FLOPs,
loss in nats/token.

- Approach 3 (Hoffmann et al. 2022, Epoch AI's replication, Besiroglu et al. 2024):
  ``fit_parametric(N, D, loss)`` fits L(N, D) = E + A / N^alpha + B / D^beta by minimising the
  SUM of Huber(delta = 1e-3) of the log-loss residuals log L_pred - log L, with
  L_pred = exp(LSE(a - alpha log N, b - beta log D, e)) (A = e^a, B = e^b, E = e^e).
  The objective is badly conditioned (only ~9% of the usual grid of L-BFGS starts reach the
  optimum), so instead of thousands of L-BFGS runs we use *variable projection*: for fixed
  exponents (alpha, beta) the model is linear in (E, A, B), and an iteratively reweighted
  (Huber weights) non-negative least-squares solve of the linearised relative residual gives
  the profile optimum. All grid points are solved at once (the 3-variable NNLS is done by
  enumerating its 7 active sets, vectorised). The best few profile candidates are then
  polished with BFGS on the exact objective with its analytic gradient.
  ``fit_parametric_grid`` is the plain reference (one L-BFGS per grid start).
- Approach 2: ``fit_isoflop(budget, N, loss)`` fits a parabola of loss in log N per budget,
  then power laws N*(C) = k C^a and D*(C) = k_D C^b through the parabola vertices.
- ``optimal_allocation`` is the closed form from Approach 3 parameters (C = 6 N D);
  ``chinchilla_table`` tabulates it.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from lib.core import (
    check_confidence,
    check_int,
    check_number,
    check_positive,
    check_positive_array,
    check_same_length,
    check_seed,
)
from lib.scaling.bootstrap import IsoFLOPBootstrap, isoflop_bootstrap

HUBER_DELTA = 1e-3
# Below this fraction of the loss's scale a loss spread or a parabola's curvature x half-range^2
# is floating-point noise (a constant loss fits a curvature of ~1e-15), not a minimum.
FLAT_RTOL = 1e-9
# Published parameters (the reference values tests and notebooks compare against).
HOFFMANN_2022 = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
EPOCH_2024 = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
# Exponent a of N_opt ~ C^a reported by Hoffmann et al. (approaches 1/2 and 3) and Kaplan et al.
PUBLISHED_EXPONENTS = {"chinchilla_approach_1_2": 0.50, "chinchilla_approach_3": 0.46,
                       "kaplan_2020": 0.73}
# The point fit's profile grid only ranks BFGS starts: 12 x 12 exponents with 4 Huber-IRLS steps
# rank the same two best starts as 32 x 32 with 8 steps on Epoch's 240 points and on synthetic
# Epoch-law data (objective within 1e-15 of the denser grid's), at a fifth of its time
# (benchmarks/bench_scaling.py). Bootstrap refits keep 8 steps.
PROFILE_IRLS_STEPS = 4
# Hoffmann/Epoch grid of L-BFGS starts: alpha, beta, e, a, b.
HOFFMANN_GRID = (np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5), np.arange(-1, 1.51, 0.5),
                 np.arange(0, 25.1, 5), np.arange(0, 25.1, 5))


# --------------------------------------------------------------------------- Approach 3 objective


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Huber loss: r^2/2 for |r| <= delta, delta (|r| - delta/2) beyond."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def parametric_objective(theta, log_n, log_d, log_loss, delta: float = HUBER_DELTA):
    """Sum of Huber(log L_pred - log L) and its gradient for theta = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    t = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    m = t.max(axis=0)
    w = np.exp(t - m)
    s = w.sum(axis=0)
    pred = m + np.log(s)
    w /= s
    r = pred - log_loss
    g = np.clip(r, -delta, delta)  # dHuber/dr
    grad = np.array([(g * w[0]).sum(), (g * w[1]).sum(), (g * w[2]).sum(),
                     -(g * w[0] * log_n).sum(), -(g * w[1] * log_d).sum()])
    return float(huber(r, delta).sum()), grad


def _polish(theta0, log_n, log_d, log_loss, delta, maxiter=2000, gtol=1e-9):
    """Quasi-Newton (BFGS) on the exact objective from ``theta0``; the objective is scaled by
    1/delta (~ sum |r|) so the gradient tolerance means the same for any delta. BFGS rather
    than L-BFGS-B: with 5 parameters its dense update is free, it needs ~3x fewer iterations
    here, and scipy's L-BFGS-B calls multi-threaded BLAS on tiny vectors, which is ~20x
    slower on a busy machine."""
    fun = lambda th: tuple(v / delta for v in parametric_objective(th, log_n, log_d, log_loss, delta))
    res = minimize(fun, np.asarray(theta0, float), jac=True, method="BFGS",
                   options={"maxiter": maxiter, "gtol": gtol})
    return res.x, res.fun * delta


def _nnls3_batch(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted NNLS min_c sum_i w_i (X_i c - y_i)^2, c >= 0, for a batch: X [G, n, 3], y [n],
    w [G, n] -> c [G, 3]. Exact: the optimum is the best non-negative unconstrained LS
    solution over the 7 non-empty active sets (3 variables, so enumeration is cheap)."""
    # Elementwise products and sums rather than batched matmul: tiny BLAS calls from
    # multi-threaded BLAS are ~10x slower on a busy machine (thread oversubscription).
    G = X.shape[0]
    Xw = X * w[..., None]
    XtWX = np.empty((G, 3, 3))
    for i in range(3):
        for j in range(i, 3):
            XtWX[:, i, j] = XtWX[:, j, i] = (Xw[..., i] * X[..., j]).sum(axis=1)
    XtWy = (Xw * y[:, None]).sum(axis=1)
    yWy = (w * (y * y)).sum(axis=1)
    best_c = np.zeros((G, 3))
    best_obj = yWy.copy()  # c = 0
    for mask in range(1, 8):
        idx = [j for j in range(3) if mask >> j & 1]
        M = XtWX[:, idx][:, :, idx] + 1e-30 * np.eye(len(idx))
        with np.errstate(all="ignore"):
            try:
                c_sub = np.linalg.solve(M, XtWy[:, idx][..., None])[..., 0]
            except np.linalg.LinAlgError:
                continue
            c = np.zeros((G, 3))
            c[:, idx] = c_sub
            # ||W^1/2 (Xc - y)||^2 from the normal equations (no n-length residuals needed).
            obj = yWy - 2 * np.einsum("gi,gi->g", c, XtWy) + np.einsum("gi,gij,gj->g", c, XtWX, c)
        ok = np.all(c_sub >= 0, axis=1) & np.isfinite(obj) & (obj < best_obj)
        best_c[ok], best_obj[ok] = c[ok], obj[ok]
    return best_c


def _profile_grid(log_n, log_d, log_loss, alphas, betas, delta, irls_steps=8):
    """For each (alpha, beta) on the grid: Huber-IRLS NNLS for (E, A, B) on the relative
    residual (E + A N^-alpha + B D^-beta) / L - 1 ~ log-residual. Returns thetas [G, 5] and
    their exact objective values [G]."""
    al, be = np.meshgrid(alphas, betas, indexing="ij")
    al, be = al.ravel(), be.ravel()
    inv_l = np.exp(-log_loss)
    # Columns scaled by their mean so the normal equations are well conditioned.
    cols = np.stack([np.broadcast_to(inv_l, (al.size, inv_l.size)),
                     np.exp(-al[:, None] * log_n) * inv_l,
                     np.exp(-be[:, None] * log_d) * inv_l], axis=-1)
    scale = cols.mean(axis=1, keepdims=True)
    X = cols / scale
    y = np.ones_like(log_loss)
    w = np.ones((al.size, log_loss.size))
    for _ in range(irls_steps):
        c = _nnls3_batch(X, y, w)
        r = (X * c[:, None, :]).sum(axis=2) - y
        w = np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
    coef = np.maximum(c / scale[:, 0, :], 1e-300)  # E, A, B (>= 0; log needs > 0)
    thetas = np.column_stack([np.log(coef[:, 1]), np.log(coef[:, 2]), np.log(coef[:, 0]), al, be])
    # Exact Huber-on-log objective for ranking.
    t = np.stack([thetas[:, 0, None] - al[:, None] * log_n, thetas[:, 1, None] - be[:, None] * log_d,
                  np.broadcast_to(thetas[:, 2, None], (al.size, log_n.size))])
    pred = np.logaddexp(np.logaddexp(t[0], t[1]), t[2])
    obj = huber(pred - log_loss, delta).sum(axis=1)
    return thetas, obj


# --------------------------------------------------------------------------- Approach 3 result


@dataclass
class ParametricFit:
    """L(N, D) = E + A / N^alpha + B / D^beta (N parameters, D tokens, L nats/token).

    ``bootstrap`` holds one row per bootstrap refit (columns E, A, B, alpha, beta, a); ``ci``
    summarises it. ``objective`` is the summed Huber loss at the optimum.
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = float("nan")
    n_points: int = 0
    seconds: float = 0.0
    bootstrap: pd.DataFrame | None = field(default=None, repr=False)
    info: dict = field(default_factory=dict, repr=False)  # fitter diagnostics

    @classmethod
    def from_params(cls, params: dict) -> ParametricFit:
        """A fit from published parameters, e.g. ``ParametricFit.from_params(HOFFMANN_2022)``."""
        return cls(**_law_params(params, ("E", "A", "B", "alpha", "beta")))

    @property
    def params(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}

    @property
    def a(self) -> float:
        """Exponent of N_opt ~ C^a: beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt ~ C^b: alpha / (alpha + beta)."""
        return self.alpha / (self.alpha + self.beta)

    def predict(self, N, D) -> np.ndarray:
        """Predicted loss (nats/token) for N parameters trained on D tokens."""
        N = check_positive_array("N", N)
        D = check_positive_array("D", D)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def optimal_allocation(self, C):
        """(N_opt, D_opt) minimising the predicted loss at C = 6 N D training FLOPs."""
        return optimal_allocation(self.params, C)

    def ci(self, level: float = 0.95) -> pd.DataFrame:
        """Point estimate and percentile bootstrap interval of each parameter (and of a)."""
        if self.bootstrap is None or self.bootstrap.empty:
            raise ValueError("this fit has no bootstrap; call fit_parametric(..., n_bootstrap>0)")
        level = check_confidence(level, "level")
        lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
        point = {**self.params, "a": self.a}
        boot = self.bootstrap.replace([np.inf, -np.inf], np.nan)
        with np.errstate(all="ignore"):  # degenerate resamples can hold huge A, B
            return pd.DataFrame({"estimate": pd.Series(point), "low": boot.quantile(lo),
                                 "high": boot.quantile(hi), "std": boot.std()})


def _law_params(params: dict, keys) -> dict[str, float]:
    """The named parameters of a loss law as floats; every one must be there."""
    missing = set(keys) - set(params)
    if missing:
        raise ValueError(f"params must hold {', '.join(keys)}; missing {sorted(missing)}")
    return {k: check_number(f"params[{k!r}]", params[k]) for k in keys}


def _prepare(N, D, loss):
    N, D, loss = (check_positive_array(k, v) for k, v in (("N", N), ("D", D), ("loss", loss)))
    check_same_length(N=N, D=D, loss=loss)
    if N.size < 5:
        raise ValueError(f"fit_parametric needs at least 5 points (5 parameters), got {N.size}")
    # Degenerate designs: the optimiser would return some point of a flat valley (A = 1e-300).
    distinct = np.unique(np.stack([N, D], axis=1), axis=0).shape[0]
    if distinct < 5:
        raise ValueError(f"fit_parametric needs at least 5 distinct (N, D) points for 5 parameters, got "
                         f"{distinct} among {N.size} (repeated points add no information)")
    for name, values in (("N", N), ("D", D)):
        if np.unique(values).size < 2:
            raise ValueError(f"{name} takes the single value {values[0]:.4g}: its term's coefficient and "
                             "exponent cannot be fitted")
    if np.ptp(loss) <= FLAT_RTOL * loss.max():
        raise ValueError(f"loss is constant ({loss[0]:.6g}) across the points: E alone fits it and A, B, "
                         "alpha, beta are undetermined")
    return np.log(N), np.log(D), np.log(loss)


def _fit_core(log_n, log_d, log_loss, delta, grid_size, n_polish, extra_starts=(), irls_steps=8):
    exps = np.linspace(0.02, 2.5, grid_size)
    thetas, obj = _profile_grid(log_n, log_d, log_loss, exps, exps, delta, irls_steps=irls_steps)
    order = np.argsort(obj)[:n_polish]
    starts = [thetas[i] for i in order] + [np.asarray(s, float) for s in extra_starts]
    best_theta, best_obj = None, np.inf
    for s in starts:
        th, f = _polish(s, log_n, log_d, log_loss, delta)
        if f < best_obj:
            best_theta, best_obj = th, f
    return best_theta, best_obj


def _theta_to_params(th) -> dict[str, float]:
    with np.errstate(over="ignore"):  # degenerate bootstrap resamples may run off to inf
        return {"E": float(np.exp(th[2])), "A": float(np.exp(th[0])), "B": float(np.exp(th[1])),
                "alpha": float(th[3]), "beta": float(th[4])}


def fit_parametric(N, D, loss, *, delta: float = HUBER_DELTA, n_bootstrap: int = 0,
                   seed: int = 0, grid_size: int = 12, n_polish: int = 2) -> ParametricFit:
    """Approach 3: fit L = E + A/N^alpha + B/D^beta (Huber on log-loss, summed).

    ``N`` parameters, ``D`` tokens, ``loss`` nats/token (1-D arrays of equal length).
    Variable projection over a ``grid_size``^2 grid of (alpha, beta) in [0.02, 2.5], then
    BFGS polishes of the ``n_polish`` best candidates (the grid only ranks starts, so its
    Huber-IRLS runs ``PROFILE_IRLS_STEPS`` steps; see the note there). ``n_bootstrap`` resamples of the
    points (with replacement, generator seeded by ``seed``) are refit warm-started from the
    point estimate and a coarse profile grid; they fill ``ParametricFit.bootstrap``.
    """
    delta = check_positive("delta", delta)
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, 0)
    seed = check_seed("seed", seed)
    grid_size = check_int("grid_size", grid_size, 4)
    n_polish = check_int("n_polish", n_polish, 1)
    start = time.perf_counter()
    log_n, log_d, log_loss = _prepare(N, D, loss)
    theta, obj = _fit_core(log_n, log_d, log_loss, delta, grid_size, n_polish, irls_steps=PROFILE_IRLS_STEPS)
    fit = ParametricFit(**_theta_to_params(theta), objective=obj, n_points=log_n.size)
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        rows = []
        for _ in range(n_bootstrap):
            idx = rng.integers(0, log_n.size, log_n.size)
            th, _ = _fit_core(log_n[idx], log_d[idx], log_loss[idx], delta, grid_size=12,
                              n_polish=1, extra_starts=[theta])
            p = _theta_to_params(th)
            rows.append({**p, "a": p["beta"] / (p["alpha"] + p["beta"])})
        fit.bootstrap = pd.DataFrame(rows)
    fit.seconds = time.perf_counter() - start
    return fit


def fit_parametric_grid(N, D, loss, *, delta: float = HUBER_DELTA, grid=HOFFMANN_GRID,
                        max_starts: int | None = None, seed: int = 0) -> ParametricFit:
    """The plain reference fit: one scipy L-BFGS-B (analytic gradient, default tolerances) from
    every point of ``grid`` = (alphas, betas, es, as, bs) (Hoffmann/Epoch's grid by default);
    keeps the best. ``max_starts`` runs a random subset of that many starts (seeded)."""
    delta = check_positive("delta", delta)
    seed = check_seed("seed", seed)
    log_n, log_d, log_loss = _prepare(N, D, loss)
    mesh = np.stack(np.meshgrid(*grid, indexing="ij"), axis=-1).reshape(-1, 5)
    starts = mesh[:, [3, 4, 2, 0, 1]]  # -> (a, b, e, alpha, beta)
    if max_starts is not None:
        max_starts = check_int("max_starts", max_starts, 1)
        idx = np.random.default_rng(seed).permutation(len(starts))[:max_starts]
        starts = starts[idx]
    t0 = time.perf_counter()
    objectives = np.empty(len(starts))
    best_theta, best_obj = None, np.inf
    for i, s in enumerate(starts):
        res = minimize(parametric_objective, s, args=(log_n, log_d, log_loss, delta), jac=True,
                       method="L-BFGS-B")
        objectives[i] = res.fun
        if res.fun < best_obj:
            best_theta, best_obj = res.x, res.fun
    return ParametricFit(**_theta_to_params(best_theta), objective=float(best_obj),
                         n_points=log_n.size, seconds=time.perf_counter() - t0,
                         info={"start_objectives": objectives})


# --------------------------------------------------------------------------- closed form + table


def optimal_allocation(params: dict | ParametricFit, C):
    """Closed-form compute-optimal (N_opt, D_opt) for C training FLOPs with C = 6 N D.

    G = (alpha A / (beta B))^(1/(alpha+beta)), N_opt = G (C/6)^a, D_opt = (C/6)^b / G with
    a = beta/(alpha+beta), b = alpha/(alpha+beta) (Hoffmann et al. 2022, eq. 4).
    """
    p = params.params if isinstance(params, ParametricFit) else params
    p = _law_params(p, ("A", "B", "alpha", "beta"))
    # A finite optimum needs every term to fall with its resource.
    A, B, alpha, beta = (check_positive(f"params[{k!r}]", v) for k, v in p.items())
    C = check_positive_array("C", C)
    # In logs: a fit with small exponents makes G overflow a float (inf there, not an exception).
    log_g = (math.log(alpha * A) - math.log(beta * B)) / (alpha + beta)
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    log_c = np.log(C / 6.0)
    with np.errstate(over="ignore"):
        return np.exp(log_g + a * log_c), np.exp(b * log_c - log_g)


def chinchilla_table(fit: ParametricFit | dict, budgets=None) -> pd.DataFrame:
    """Compute-optimal model size and data per budget (FLOPs), from Approach-3 parameters.

    Columns: flops, n_opt (parameters), d_opt (tokens), tokens_per_param, loss (predicted
    nats/token). ``budgets`` defaults to 1e18, 1e19, ..., 1e24 FLOPs.
    """
    if isinstance(fit, dict):
        fit = ParametricFit.from_params(fit)
    if not isinstance(fit, ParametricFit):
        raise ValueError(f"fit must be a ParametricFit or a parameter dict, got {type(fit).__name__}")
    budgets = np.logspace(18, 24, 7) if budgets is None else check_positive_array("budgets", budgets)
    n_opt, d_opt = fit.optimal_allocation(budgets)
    # A degenerate law (exponents near 0) puts the optimum past a float: its rows show inf / 0
    # and no loss rather than failing the table.
    ok = np.isfinite(n_opt) & (n_opt > 0) & np.isfinite(d_opt) & (d_opt > 0)
    loss = np.full(len(budgets), np.nan)
    if ok.any():
        loss[ok] = fit.predict(n_opt[ok], d_opt[ok])
    with np.errstate(divide="ignore", invalid="ignore"):
        per_param = d_opt / n_opt
    return pd.DataFrame({"flops": budgets, "n_opt": n_opt, "d_opt": d_opt,
                         "tokens_per_param": per_param, "loss": loss})


# --------------------------------------------------------------------------- Approach 2


def fit_parabola(log_n, loss):
    """Least-squares parabola loss = c2 x^2 + c1 x + c0 in x = log N; returns (vertex x, c2)."""
    c2, c1, _ = np.polyfit(log_n, loss, 2)
    return -c1 / (2 * c2), c2


class AllocationLaws:
    """The pair of power laws N*(C) = k_n C^a, D*(C) = k_d C^b shared by the Approach-2 fits
    (``IsoFLOPFit``, ``lib.scaling.EnvelopeFit``): prediction and the bootstrap interval.

    Subclasses are dataclasses with fields ``a``, ``log10_k_n``, ``b``, ``log10_k_d`` and
    ``bootstrap`` (one row per draw, or None), and name their fitter in ``fitter``.
    """

    fitter = "fit_isoflop"

    def predict(self, C):
        """(N*, D*) at C FLOPs from the fitted power laws."""
        C = check_positive_array("C", C)
        return 10 ** self.log10_k_n * C**self.a, 10 ** self.log10_k_d * C**self.b

    def ci(self, level: float = 0.95) -> pd.DataFrame:
        """Point estimate and percentile bootstrap interval of a, b and the prefactors."""
        if self.bootstrap is None or self.bootstrap.empty:
            raise ValueError(f"this fit has no bootstrap; call {self.fitter}(..., n_bootstrap>0)")
        level = check_confidence(level, "level")
        lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
        point = pd.Series({"a": self.a, "b": self.b, "log10_k_n": self.log10_k_n,
                           "log10_k_d": self.log10_k_d})
        return pd.DataFrame({"estimate": point, "low": self.bootstrap.quantile(lo),
                             "high": self.bootstrap.quantile(hi), "std": self.bootstrap.std()})


@dataclass
class IsoFLOPFit(AllocationLaws):
    """Approach 2: per-budget parabola vertices and the power laws N*(C) = k_n C^a,
    D*(C) = k_d C^b (C FLOPs, N parameters, D tokens).

    ``vertices``: one row per budget (flops, n_opt, d_opt, loss_min, curvature, n_points,
    in_range, and with a bootstrap the vertex spread ``log10_n_opt_std`` (robust std, dex)
    and its interval). ``bootstrap``: one row per draw (a, b, log10_k_n, log10_k_d);
    ``uncertainty``: the ``lib.scaling.bootstrap.IsoFLOPBootstrap`` behind it (its noise
    estimate, per-budget draws and ``predict``).
    """

    a: float
    log10_k_n: float
    b: float
    log10_k_d: float
    vertices: pd.DataFrame
    bootstrap: pd.DataFrame | None = field(default=None, repr=False)
    uncertainty: IsoFLOPBootstrap | None = field(default=None, repr=False)



def _isoflop_vertices(groups):
    rows = []
    for c, ln, ld, lo in groups:
        xn, c2n = fit_parabola(ln, lo)
        xd, _ = fit_parabola(ld, lo)
        rows.append((c, xn, xd, c2n))
    return rows


def _power_law(flops, log_opt):
    slope, intercept = np.polyfit(np.log10(flops), np.asarray(log_opt) / np.log(10), 1)
    return slope, intercept


def fit_isoflop(budget, N, loss, D=None, *, n_bootstrap: int = 200, seed: int = 0,
                noise: str = "residual", sigma: float | None = None) -> IsoFLOPFit:
    """Approach 2 on IsoFLOP data: ``budget`` (FLOPs per run), ``N`` parameters, ``loss``
    (nats/token), ``D`` tokens (default C / (6 N)).

    Per budget, parabolas of loss in log N and in log D give N* and D* (their vertices); a
    line through (log C, log N*) gives a, through (log C, log D*) gives b. A vertex outside the
    budget's sampled range, or a parabola opening downwards, triggers a ``UserWarning`` (the
    vertex is then an extrapolation). Bootstrap: ``lib.scaling.bootstrap.isoflop_bootstrap``,
    ``n_bootstrap`` parametric draws from the sweep's measured noise (``noise="residual"`` or
    ``"replicates"``, or a given ``sigma``; generator seeded by ``seed``), so the intervals
    include the seed noise; it warns when over 2.5% of the drawn parabolas open downwards.
    """
    budget, N, loss = (check_positive_array(k, v) for k, v in
                       (("budget", budget), ("N", N), ("loss", loss)))
    check_same_length(budget=budget, N=N, loss=loss)
    D = budget / (6.0 * N) if D is None else check_positive_array("D", D)
    check_same_length(budget=budget, D=D)
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, 0)
    seed = check_seed("seed", seed)
    levels = np.unique(budget)
    groups = []
    for c in levels:
        m = budget == c
        if np.unique(N[m]).size < 3:
            raise ValueError(f"budget {c:.3g} has {np.unique(N[m]).size} distinct sizes N among its {m.sum()} "
                             "points; a parabola needs at least 3")
        if np.unique(D[m]).size < 3:
            raise ValueError(f"D at budget {c:.3g} has {np.unique(D[m]).size} distinct values among its "
                             f"{m.sum()} points; D* needs at least 3 (were the runs cut short of their "
                             "planned tokens?)")
        groups.append((c, np.log(N[m]), np.log(D[m]), loss[m]))
    if len(groups) < 2:
        raise ValueError("fit_isoflop needs at least 2 distinct budgets for a power law")
    rows = _isoflop_vertices(groups)
    for (c, ln, _, lo), (_, _, _, c2) in zip(groups, rows):
        span, scale = abs(c2) * (np.ptp(ln) / 2) ** 2, float(np.max(lo))
        if span <= FLAT_RTOL * scale:
            raise ValueError(f"loss at budget {c:.3g} is flat in N: the parabola's curvature x half-range^2 is "
                             f"{span:.2g}, against a loss of {scale:.3g} (threshold {FLAT_RTOL:g} of it), so "
                             "there is no minimum to locate; check that the budget's runs differ")
    flops = np.array([r[0] for r in rows])
    xn, xd = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    a, kn = _power_law(flops, xn)
    b, kd = _power_law(flops, xd)
    vert = pd.DataFrame({"flops": flops, "n_opt": np.exp(xn), "d_opt": np.exp(xd),
                         "curvature": [r[3] for r in rows],
                         "n_points": [len(g[1]) for g in groups]})
    vert["loss_min"] = [np.polyval(np.polyfit(g[1], g[3], 2), x) for g, x in zip(groups, xn)]
    vert["in_range"] = [(g[1].min() <= x <= g[1].max()) and r[3] > 0
                        for g, x, r in zip(groups, xn, rows)]
    for _, row in vert[~vert.in_range].iterrows():
        warnings.warn(f"IsoFLOP vertex at C={row.flops:.3g} (N*={row.n_opt:.3g}) lies outside "
                      "the sampled sizes or the parabola opens downwards: it is an extrapolation",
                      UserWarning, stacklevel=2)
    fit = IsoFLOPFit(a=a, log10_k_n=kn, b=b, log10_k_d=kd, vertices=vert)
    if n_bootstrap:
        boot = isoflop_bootstrap(budget, N, loss, D=D, n_bootstrap=n_bootstrap, seed=seed,
                                 noise=noise, sigma=sigma)
        if boot.degenerate > 0.025:
            warnings.warn(f"{boot.degenerate:.0%} of the bootstrap parabolas open downwards (the "
                          "noise is comparable to the loss differences between sizes): their "
                          "vertices are the best sampled size, so the interval is a lower bound "
                          "on the uncertainty", UserWarning, stacklevel=2)
        fit.bootstrap, fit.uncertainty = boot.draws, boot
        summary = boot.vertex_summary().drop(columns="flops")
        fit.vertices = pd.concat([fit.vertices, summary.set_index(fit.vertices.index)], axis=1)
    return fit

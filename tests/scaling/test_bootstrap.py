"""lib.scaling.bootstrap: Approach-2 intervals that include the seed noise, checked by Monte Carlo
against IsoFLOP sweeps drawn from a known loss law (Epoch AI's Chinchilla refit) with noise."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lib.scaling import EPOCH_2024, ParametricFit, fit_isoflop, isoflop_bootstrap

LAW = ParametricFit.from_params(EPOCH_2024)
BUDGETS = np.logspace(18, 20, 5)


def sweep(rng, sigma, seeds, budgets=BUDGETS, n_sizes=7, span=16.0, prior=20.0):
    """An IsoFLOP sweep planned as ``plan_sweep`` plans it (sizes log-spaced around
    sqrt(C / (6 prior)), not around the true optimum), every point run over ``seeds`` seeds,
    each run's loss the law's plus Gaussian seed noise ``sigma`` (nats)."""
    C = np.repeat(budgets, n_sizes)
    N = np.sqrt(C / (6 * prior)) * np.tile(np.geomspace(span**-0.5, span**0.5, n_sizes), len(budgets))
    C, N = np.repeat(C, seeds), np.repeat(N, seeds)
    return C, N, LAW.predict(N, C / (6 * N)) + sigma * rng.standard_normal(N.size)


@pytest.mark.parametrize("seeds", [1, 3])
def test_95_percent_interval_covers_the_true_exponent_in_90_to_99_percent_of_trials(seeds):
    # Seed noise of 0.02 nats: the seed-to-seed spread of small LM runs, comparable to the loss
    # differences between neighbouring sizes at the largest budget.
    rng = np.random.default_rng(seeds)
    trials, hits, widths = 240, 0, []
    for trial in range(trials):
        C, N, loss = sweep(rng, 0.02, seeds)
        a = isoflop_bootstrap(C, N, loss, n_bootstrap=400, seed=trial).draws["a"]
        low, high = np.quantile(a, [0.025, 0.975])
        hits += low <= LAW.a <= high
        widths.append(high - low)
    assert 0.90 <= hits / trials <= 0.99
    assert np.median(widths) < 0.2  # informative, not vacuous


def test_replicates_narrow_the_interval_and_the_noise_estimate_matches_the_truth():
    rng = np.random.default_rng(0)
    one = isoflop_bootstrap(*sweep(rng, 0.02, 1), n_bootstrap=2000)
    three = isoflop_bootstrap(*sweep(rng, 0.02, 3), n_bootstrap=2000)
    assert one.dof == 35 - 15 and three.dof == 105 - 15
    assert three.sigma == pytest.approx(0.02, rel=0.25)
    rep = isoflop_bootstrap(*sweep(rng, 0.02, 3), n_bootstrap=10, noise="replicates")
    assert rep.noise == "replicates" and rep.dof == 105 - 35
    assert rep.sigma == pytest.approx(0.02, rel=0.25)
    width = lambda b: np.subtract(*np.quantile(b.draws["a"], [0.975, 0.025]))
    assert width(three) < 0.8 * width(one)  # 3x the runs: about 1/sqrt(3) the width


def test_per_budget_vertex_spread_matches_the_spread_over_repeated_sweeps():
    # Independent reference: the spread of the point-estimate vertices over many sweeps drawn
    # afresh from the law (what the bootstrap claims to estimate from one sweep).
    rng = np.random.default_rng(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        actual = np.array([np.log10(fit_isoflop(*sweep(rng, 0.02, 3), n_bootstrap=0).vertices["n_opt"])
                           for _ in range(300)])
    q = np.quantile(actual, [0.16, 0.84], axis=0)
    truth = (q[1] - q[0]) / 2
    claimed = np.median([isoflop_bootstrap(*sweep(rng, 0.02, 3), n_bootstrap=1000, seed=s)
                         .vertex_summary()["log10_n_opt_std"] for s in range(20)], axis=0)
    np.testing.assert_allclose(claimed, truth, rtol=0.3)
    assert np.all(np.diff(truth) > 0)  # flatter parabolas at larger budgets: noisier vertices


def test_fit_isoflop_carries_the_bootstrap_and_a_known_sigma_is_used_exactly():
    rng = np.random.default_rng(2)
    C, N, loss = sweep(rng, 0.01, 2)
    fit = fit_isoflop(C, N, loss, n_bootstrap=500, seed=3)
    assert fit.uncertainty.noise == "residual" and len(fit.bootstrap) == 500
    assert {"log10_n_opt_std", "log10_n_opt_low", "log10_n_opt_high"} <= set(fit.vertices)
    lo, hi = fit.ci().loc["a", ["low", "high"]]
    assert lo < fit.a < hi
    same = fit_isoflop(C, N, loss, n_bootstrap=500, seed=3)
    assert same.bootstrap.equals(fit.bootstrap)  # seeded
    known = isoflop_bootstrap(C, N, loss, n_bootstrap=10, sigma=0.0)
    assert known.dof == 0 and np.ptp(known.draws["a"]) == 0  # no noise: every draw is the fit
    pred = fit.uncertainty.predict([1e21])
    assert len(pred) == 500 and np.isfinite(pred["log10_n_opt"]).all()


def test_noisy_sweep_warns_about_downward_parabolas():
    rng = np.random.default_rng(3)
    C, N, loss = sweep(rng, 0.3, 1, budgets=np.logspace(18, 19, 3), n_sizes=5)
    with pytest.warns(UserWarning, match="open downwards"):
        fit = fit_isoflop(C, N, loss, n_bootstrap=300)
    assert fit.uncertainty.degenerate > 0.025
    assert np.isfinite(fit.bootstrap.to_numpy()).all()  # vertices fall back to the best size, counted


def test_isoflop_bootstrap_validates_before_any_compute():
    C, N, loss = sweep(np.random.default_rng(0), 0.01, 1, budgets=[1e18, 1e19], n_sizes=3)
    with pytest.raises(ValueError, match="residual degrees of freedom"):
        isoflop_bootstrap(C, N, loss)
    with pytest.raises(ValueError, match="replicates"):
        isoflop_bootstrap(C, N, loss, noise="replicates")
    with pytest.raises(ValueError, match="noise"):
        isoflop_bootstrap(C, N, loss, noise="seeds")
    with pytest.raises(ValueError, match="sigma"):
        isoflop_bootstrap(C, N, loss, sigma=-1.0)
    with pytest.raises(ValueError, match="n_bootstrap"):
        isoflop_bootstrap(C, N, loss, n_bootstrap=0)
    with pytest.raises(ValueError, match="2 distinct budgets"):
        isoflop_bootstrap(C[:3], N[:3], loss[:3])
    with pytest.raises(ValueError, match="distinct sizes"):
        isoflop_bootstrap(np.repeat([1e18, 1e19], 3), np.tile([1, 1, 2], 2), np.ones(6))
    with pytest.raises(ValueError, match="same length"):
        isoflop_bootstrap(C, N[:-1], loss)

"""lib.scaling.envelope: Approach 1 recovers the closed-form exponent from training curves drawn
from a known law, and the extrapolation check finds no error where the law holds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.scaling import (
    EPOCH_2024,
    ParametricFit,
    extrapolation_check,
    fit_envelope,
    optimal_allocation,
)

LAW = ParametricFit.from_params(EPOCH_2024)


def law_curves(sizes, d_lo=1e8, d_hi=1e12, points=60, noise=0.0, seed=0):
    """Each size's curve: at D tokens the law's L(N, D) (the loss a run of that length ends
    at), C = 6 N D."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate(sizes):
        d = np.geomspace(d_lo, d_hi, points)
        loss = LAW.predict(n, d) + noise * rng.standard_normal(points)
        rows.append(pd.DataFrame({"run_id": f"r{i}", "n_params": n, "tokens": d, "flops": 6 * n * d,
                                  "loss": loss}))
    return pd.concat(rows, ignore_index=True)


def test_envelope_recovers_the_closed_form_exponents():
    curves = law_curves(np.geomspace(1e7, 3e10, 40))
    fit = fit_envelope(curves, flops_range=(1e19, 1e22), n_grid=30, n_bootstrap=50)
    assert fit.a == pytest.approx(LAW.a, abs=0.03)
    assert fit.b == pytest.approx(LAW.b, abs=0.03)
    n_pred, _ = fit.predict(1e21)
    n_true, _ = optimal_allocation(EPOCH_2024, 1e21)
    assert np.log10(n_pred[0] / n_true[0]) == pytest.approx(0, abs=0.1)
    # The envelope is the minimum over runs at every grid point: no run is lower anywhere.
    assert (np.diff(fit.envelope["loss"]) < 0).all()
    ci = fit.ci()
    assert ci.loc["a", "low"] <= fit.a <= ci.loc["a", "high"]


def test_envelope_validates_its_input():
    curves = law_curves([1e8, 1e9], points=5)
    with pytest.raises(ValueError, match="columns"):
        fit_envelope(curves.drop(columns="tokens"))
    with pytest.raises(ValueError, match="at least 2 runs"):
        fit_envelope(curves[curves.run_id == "r0"])
    with pytest.raises(ValueError, match="n_grid"):
        fit_envelope(curves, n_grid=1)
    with pytest.raises(ValueError, match="flops_range"):
        fit_envelope(curves, flops_range=(1e20, 1e19))
    with pytest.raises(ValueError, match="bootstrap"):
        fit_envelope(curves, n_bootstrap=0).ci()


def test_extrapolation_check_finds_no_error_where_the_law_holds():
    rng = np.random.default_rng(0)
    budgets = np.logspace(18, 20, 4)
    C = np.repeat(budgets, 7)
    # Centred on the true optimum: a prior-centred grid adds the parabola's own small bias.
    N = optimal_allocation(EPOCH_2024, C)[0] * np.tile(np.geomspace(0.25, 4, 7), 4)
    C, N = np.repeat(C, 2), np.repeat(N, 2)
    exact = LAW.predict(N, C / (6 * N))
    check = extrapolation_check(C, N, exact, n_bootstrap=200).set_index("quantity")
    assert np.abs(check["error"]).max() < 1e-3  # noise-free: Approaches 2 and 3 extrapolate exactly
    assert check.loc["log10 N*", "high"] - check.loc["log10 N*", "low"] < 0.01
    loss = exact + 0.005 * rng.standard_normal(N.size)
    check = extrapolation_check(C, N, loss, n_bootstrap=500).set_index("quantity")
    n_star = check.loc["log10 N*"]
    assert n_star["low"] < n_star["error"] < n_star["high"] and n_star["high"] - n_star["low"] < 0.1
    assert abs(n_star["error"]) < 1.5 * (n_star["high"] - n_star["low"])  # within noise
    assert n_star["n_heldout"] == 14
    assert abs(check.loc["loss", "error"]) < 0.01
    # A law that bends at the held-out budget is caught: its measured losses sit 0.1 higher.
    bent = loss + 0.1 * (C == budgets[-1])
    assert extrapolation_check(C, N, bent, n_bootstrap=200).set_index("quantity").loc["loss", "high"] < 0
    with pytest.raises(ValueError, match="at least 3 budgets"):
        extrapolation_check(C[C < budgets[2]], N[C < budgets[2]], loss[C < budgets[2]])

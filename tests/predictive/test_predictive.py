"""Tests for lib.predictive: phase rules, that predicted deltas reach the weights, oracle and
null-predictor equivalences against plain training replayed independently."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from lib.predictive import (
    MAX_LR_RATIO,
    PREDICTORS,
    EMAPredictor,
    HybridConfig,
    HybridTrainer,
    LinearPredictor,
    NullPredictor,
    Observation,
    PerWeightNet,
    PerWeightPredictor,
    Predictor,
    UpdateBasis,
    build_predictor,
    fit_coefficients,
    lr_ratio,
    relative_residual,
)
from lib.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- tiny stand-in tasks
def _regression(seed=0, n=256, d=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = torch.tanh(x @ w) + 0.05 * torch.randn(n, 1, generator=g)
    return x, y


def _mlp(seed=0, d=8):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 1))


def _minibatch_loss(x, y, batch=32):
    def loss_fn(model, step):
        idx = torch.randint(0, len(x), (batch,), generator=torch.Generator().manual_seed(1000 + step))
        return ((model(x[idx]) - y[idx]) ** 2).mean()
    return loss_fn


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _schedule(total):
    return lambda step: 0.5 * (1 + np.cos(np.pi * step / total)) * 0.9 + 0.1


# ---------------------------------------------------------------- basis algebra
def test_fit_coefficients_and_residual_match_numpy_lstsq():
    rng = np.random.default_rng(0)
    params = [torch.zeros(5, 3), torch.zeros(7)]
    basis = UpdateBasis(params, beta=0.9)
    for _ in range(3):  # a few "real" updates to populate u and m
        basis.snapshot()
        for p in params:
            p.add_(torch.as_tensor(rng.normal(size=p.shape), dtype=torch.float32))
        basis.real_update()
    u, m = basis.u.clone().numpy(), basis.m.clone().numpy()
    basis.snapshot()
    for p in params:
        p.add_(torch.as_tensor(rng.normal(size=p.shape), dtype=torch.float32))
    delta = np.concatenate([p.flatten().numpy() for p in params]) - basis.scratch.numpy()
    dots = basis.real_update()
    coef = fit_coefficients(dots, ridge=0.0)
    for i, sl in enumerate([slice(0, 15), slice(15, 22)]):
        ref, *_ = np.linalg.lstsq(np.stack([u[sl], m[sl]], 1), delta[sl], rcond=None)
        np.testing.assert_allclose(coef[i], ref, rtol=1e-4, atol=1e-6)
    c = rng.normal(size=(2, 2))
    pred = np.concatenate([c[0, 0] * u[:15] + c[0, 1] * m[:15], c[1, 0] * u[15:] + c[1, 1] * m[15:]])
    expect = np.linalg.norm(pred - delta) / np.linalg.norm(delta)
    assert relative_residual(dots, c) == pytest.approx(expect, rel=1e-5)
    assert relative_residual(dots, np.zeros((2, 2))) == pytest.approx(1.0)
    # after real_update, u holds the new delta and m the EMA
    np.testing.assert_allclose(basis.u.numpy(), delta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(basis.m.numpy(), 0.9 * m + 0.1 * delta, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- predicted deltas reach the weights
class _ConstantPredictor(Predictor):
    """Returns a fixed flat delta with a fixed confidence."""

    name = "constant"

    def __init__(self, value=1e-3, conf=1.0):
        self.value, self.conf = value, conf

    def next_update(self, basis, k, lr_ratio):
        return torch.full_like(basis.u, self.value)

    def confidence(self):
        return self.conf


def _record_params(loss_fn, store):
    def wrapped(model, step):
        store.setdefault(step, _params(model))  # first call of a step = weights at its start
        return loss_fn(model, step)
    return wrapped


def test_predicted_deltas_are_applied_to_the_parameters():
    x, y = _regression()
    model = _mlp()
    seen = {}
    cfg = HybridConfig(TrainConfig(steps=30), warmup_steps=5, full_steps=2, max_predict_steps=4,
                       correct_steps=1, confidence_threshold=0.5, predict_length="max",
                       divergence_tolerance=10.0)
    res = HybridTrainer(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        _record_params(_minibatch_loss(x, y), seen), cfg,
                        predictor=_ConstantPredictor(1e-3)).run()
    seen[cfg.total_steps] = _params(model)
    predicted = res.history.loc[~res.history["backward"], "step"].tolist()
    assert len(predicted) >= 10
    n = seen[0].numel()
    for s in predicted:
        torch.testing.assert_close(seen[s + 1] - seen[s], torch.full((n,), 1e-3), rtol=0, atol=2e-6)
    assert np.allclose(res.history.loc[~res.history["backward"], "update_norm"], 1e-3 * np.sqrt(n), rtol=1e-4)


def test_linear_predictor_repeats_last_real_update():
    x, y = _regression()
    model = _mlp()
    seen = {}
    cfg = HybridConfig(TrainConfig(steps=24, grad_clip=None), warmup_steps=6, full_steps=2,
                       max_predict_steps=3, correct_steps=1, confidence_threshold=0.0, predict_length="max",
                       check_loss=True, divergence_tolerance=100.0)
    res = HybridTrainer(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        _record_params(_minibatch_loss(x, y), seen), cfg,
                        predictor=LinearPredictor()).run()  # constant schedule: LR ratio 1
    seen[cfg.total_steps] = _params(model)
    hist = res.history.set_index("step")
    checked = 0
    for s in hist.index[~hist["backward"]]:
        last_real = max(t for t in hist.index[hist["real"]] if t < s)
        torch.testing.assert_close(seen[s + 1] - seen[s], seen[last_real + 1] - seen[last_real],
                                   rtol=1e-4, atol=1e-7)
        checked += 1
    assert checked >= 6


def test_ema_predictor_applies_bias_corrected_mean_of_updates():
    params = [torch.zeros(4)]
    basis = UpdateBasis(params, beta=0.5)
    pred = EMAPredictor()
    pred.bind(basis)
    updates = [torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])]
    for d in updates:
        basis.snapshot()
        params[0].add_(d)
        basis.real_update()
    # EMA with beta 0.5 of [e1, e2]: m = 0.25 e1 + 0.5 e2; bias correction 1/(1-0.25)
    expect = (0.25 * updates[0] + 0.5 * updates[1]) / 0.75
    torch.testing.assert_close(pred.next_update(basis, 1, 1.0), expect)
    torch.testing.assert_close(pred.next_update(basis, 1, 2.0), 2 * expect)


# ---------------------------------------------------------------- oracle and null equivalences
class _OraclePredictor(Predictor):
    """Plain SGD's next update computed exactly (deterministic full-batch quadratic)."""

    name = "oracle"

    def __init__(self, model, loss_fn, lr, schedule):
        self.model, self.loss_fn, self.lr, self.schedule = model, loss_fn, lr, schedule
        self.step = None

    def next_update(self, basis, k, lr_ratio):
        self.model.zero_grad()
        self.loss_fn(self.model, 0).backward()
        g = torch.cat([p.grad.flatten() for p in self.model.parameters()])
        self.model.zero_grad()
        return -self.lr * self.schedule(self.step) * g


def test_oracle_predictor_reproduces_plain_training_on_a_quadratic():
    torch.manual_seed(0)
    a = torch.randn(20, 6)
    b = torch.randn(20)
    loss_fn = lambda model, step: 0.5 * ((a @ model.weight.squeeze(0) - b) ** 2).mean()
    sched = _schedule(60)
    cfg = HybridConfig(TrainConfig(steps=60, grad_clip=None), warmup_steps=5, full_steps=3,
                       max_predict_steps=6, correct_steps=2, confidence_threshold=0.5, predict_length="max",
                       divergence_tolerance=10.0)
    runs = {}
    for arm in ("plain", "oracle"):
        model = nn.Linear(6, 1, bias=False)
        nn.init.zeros_(model.weight)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        oracle = _OraclePredictor(model, loss_fn, 0.1, sched) if arm == "oracle" else None
        trainer = HybridTrainer(model, opt, loss_fn, cfg, predictor=oracle, schedule=sched)
        if oracle is not None:  # the oracle needs the step index the trainer is on
            inner = loss_fn

            def tracked(m, step, inner=inner, oracle=oracle):
                oracle.step = step
                return inner(m, step)
            trainer.loss_fn = tracked
        runs[arm] = (trainer.run(), _params(model))
    res, w = runs["oracle"]
    assert res.predicted_share > 0.3
    torch.testing.assert_close(w, runs["plain"][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.history["loss"], runs["plain"][0].history["loss"], rtol=1e-5)


def test_null_predictor_equals_plain_training_on_the_real_steps_only():
    x, y = _regression(1)
    loss_fn = _minibatch_loss(x, y)
    sched = _schedule(40)
    cfg = HybridConfig(TrainConfig(steps=40), warmup_steps=8, full_steps=2, max_predict_steps=3,
                       correct_steps=1, confidence_threshold=0.0, predict_length="max")
    model = _mlp(3)
    res = HybridTrainer(model, torch.optim.AdamW(model.parameters(), lr=1e-2), loss_fn, cfg,
                        predictor=NullPredictor(), schedule=sched).run()
    real = res.real_steps
    assert 0.3 < res.predicted_share < 0.7
    assert np.all(res.history.loc[~res.history["backward"], "update_norm"] == 0)
    # independent replay: a hand-written AdamW loop over the real steps only
    ref = _mlp(3)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    for s in real:
        opt.param_groups[0]["lr"] = 1e-2 * sched(s)
        opt.zero_grad()
        loss_fn(ref, s).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
    torch.testing.assert_close(_params(model), _params(ref), rtol=0, atol=0)


# ---------------------------------------------------------------- phase rules
def _run_constant(conf, threshold=0.85, total=60, value=1e-4, **kw):
    x, y = _regression()
    model = _mlp()
    cfg = HybridConfig(TrainConfig(steps=total), warmup_steps=10, full_steps=5, max_predict_steps=10,
                       min_predict_steps=2, correct_steps=2, confidence_threshold=threshold, **kw)
    return HybridTrainer(model, torch.optim.SGD(model.parameters(), lr=0.05),
                         _minibatch_loss(x, y), cfg, predictor=_ConstantPredictor(value, conf)).run()


def test_phases_follow_the_confidence_gate_and_length_rule():
    res = _run_constant(conf=0.9, divergence_tolerance=10.0)
    tr = res.transitions
    assert tr.iloc[0][["step", "from", "to"]].tolist() == [10, "warmup", "full"]
    assert tr.iloc[1][["step", "from", "to"]].tolist() == [15, "full", "predict"]
    # length = round(10 * 0.9^2) = 8, then Correct for 2 steps, then Predict again
    assert tr.iloc[2][["step", "from", "to"]].tolist() == [23, "predict", "correct"]
    assert tr.iloc[3][["step", "from", "to"]].tolist() == [25, "correct", "predict"]
    runs = (res.history["phase"] != res.history["phase"].shift()).cumsum()
    lengths = res.history[res.history["phase"] == "predict"].groupby(runs).size()
    assert lengths.max() <= 10 and set(lengths.iloc[:-1]) == {8}
    assert (res.history.loc[res.history["phase"] == "predict", "backward"] == False).all()  # noqa: E712
    # below the threshold: never predicts
    low = _run_constant(conf=0.5)
    assert low.transitions["to"].tolist() == ["full"] and low.predicted_share == 0


def test_max_predict_length_and_low_confidence_after_correction():
    res = _run_constant(conf=1.0, threshold=0.85, predict_length="max", divergence_tolerance=10.0)
    runs = (res.history["phase"] != res.history["phase"].shift()).cumsum()
    lengths = res.history[res.history["phase"] == "predict"].groupby(runs).size()
    assert lengths.max() == 10

    class Dropping(_ConstantPredictor):
        def __init__(self):
            super().__init__(1e-4, 1.0)
            self.calls = 0

        def confidence(self):
            return 0.9 if self.calls == 0 else 0.1

        def start_rollout(self, lr_mults):
            self.calls += 1

    x, y = _regression()
    model = _mlp()
    cfg = HybridConfig(TrainConfig(steps=50), warmup_steps=5, full_steps=2, correct_steps=2,
                       divergence_tolerance=10.0)
    res = HybridTrainer(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        _minibatch_loss(x, y), cfg, predictor=Dropping()).run()
    assert res.transitions["to"].tolist() == ["full", "predict", "correct", "full"]
    assert "after correction" in res.transitions["reason"].iloc[-1]


def test_divergence_returns_to_full_and_runs_that_step_for_real():
    res = _run_constant(conf=1.0, value=0.5, divergence_tolerance=0.2)
    div = res.transitions[res.transitions["reason"].str.startswith("divergence")]
    assert len(div) >= 1
    assert (div["from"] == "predict").all() and (div["to"] == "full").all()
    for s in div["step"]:
        row = res.history.set_index("step").loc[s]
        assert row["real"] and row["phase"] == "full"


def test_plain_mode_adds_no_memory_and_basis_memory_is_three_copies():
    res = _run_constant(conf=0.0, total=12)
    n = sum(p.numel() for p in _mlp().parameters())
    assert res.memory["basis_bytes"] >= 3 * 4 * n
    assert res.memory["basis_bytes"] <= 3 * 4 * n + 8 * n
    x, y = _regression()
    model = _mlp()
    plain = HybridTrainer(model, torch.optim.SGD(model.parameters(), lr=0.05), _minibatch_loss(x, y),
                          HybridConfig(TrainConfig(steps=5))).run()
    assert plain.memory["total_bytes"] == 0 and plain.predicted_share == 0


def test_hybrid_config_takes_its_shared_settings_from_train_config():
    train = TrainConfig(steps=12, grad_clip=0.5, eval_every=4)
    cfg = HybridConfig(train, warmup_steps=np.int64(3))
    assert cfg.total_steps == 12 and cfg.train is train
    assert type(cfg.warmup_steps) is int  # numpy integers are integers, stored as Python ints
    for field in ("steps", "grad_clip", "eval_every"):  # declared once, on TrainConfig
        assert field not in {f.name for f in dataclasses.fields(HybridConfig)}
    # What the trainer does not implement is refused, not silently ignored.
    for changed in (dict(grad_accum=2, batch_size=16), dict(compile=True), dict(checkpoint_path="x.pt"),
                    dict(schedule=_Schedule(12))):
        with pytest.raises(ValueError, match=next(iter(changed))):
            HybridConfig(TrainConfig(steps=12, **changed))


class _Schedule:
    def __init__(self, total_steps):
        self.total_steps = total_steps

    def __call__(self, step):
        return 1.0


def test_grad_clip_and_eval_every_come_from_train_config():
    x, y = _regression()
    evals, norms = [], []

    def eval_fn(model):
        evals.append(1)
        return 0.0

    for grad_clip in (None, 1e-3):
        model = _mlp()
        before = _params(model)
        cfg = HybridConfig(TrainConfig(steps=6, grad_clip=grad_clip, eval_every=2), warmup_steps=6)
        res = HybridTrainer(model, torch.optim.SGD(model.parameters(), lr=0.05), _minibatch_loss(x, y), cfg,
                            eval_fn=eval_fn).run()
        assert res.evals["step"].tolist() == [0, 2, 4, 6]
        norms.append(float((_params(model) - before).norm()))
    # SGD moves at most lr * clip per step when clipped
    assert norms[1] <= 6 * 0.05 * 1e-3 + 1e-9 < norms[0]


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="steps"):
        HybridConfig(TrainConfig(steps=0))
    with pytest.raises(ValueError, match="train must be a lib.training.TrainConfig"):
        HybridConfig(30)
    with pytest.raises(ValueError, match="predict_length"):
        HybridConfig(TrainConfig(steps=5), predict_length="sometimes")
    with pytest.raises(ValueError, match="min_predict_steps"):
        HybridConfig(TrainConfig(steps=5), min_predict_steps=5, max_predict_steps=2)
    bad = [("warmup_steps", -1), ("warmup_steps", 2.0), ("full_steps", True), ("max_predict_steps", 0),
           ("correct_steps", 1.5), ("reference_window", None), ("fit_every", 0),
           ("confidence_threshold", 1.5), ("confidence_threshold", float("nan")), ("confidence_threshold", True),
           ("check_loss", 1), ("divergence_tolerance", 0.0), ("divergence_tolerance", float("inf")),
           ("basis_beta", 1.0), ("basis_beta", 0)]
    for name, value in bad:
        with pytest.raises(ValueError, match=name):
            HybridConfig(TrainConfig(steps=5), **{name: value})
    with pytest.raises(ValueError, match="beta"):
        UpdateBasis([torch.zeros(2)], beta=1.0)
    with pytest.raises(ValueError, match="residual_decay"):
        NullPredictor(residual_decay=1.0)
    with pytest.raises(ValueError, match="config must be a HybridConfig"):
        model = _mlp()
        HybridTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda m, s: 0, TrainConfig(steps=3))


def test_predictors_are_a_registry_built_by_name():
    assert sorted(PREDICTORS) == ["ema", "linear", "null", "perweight", "rssm"]
    for name in PREDICTORS:
        predictor = build_predictor(name)
        assert isinstance(predictor, Predictor) and predictor.name == name
        assert type(predictor) is PREDICTORS[name]
    assert build_predictor("plain") is None
    assert build_predictor("null", residual_decay=0.5).residual_decay == 0.5
    assert build_predictor("rssm", window=16, seq_len=4).window == 16
    for name in ("oracle", "", None, ["null"]):
        with pytest.raises(ValueError, match=r"predictor must be one of \['plain', 'null', 'linear', 'ema', 'rssm', 'perweight'\]"):
            build_predictor(name)
    with pytest.raises(TypeError):
        build_predictor("linear", window=3)  # not a LinearPredictor setting


def test_lr_ratio_follows_the_schedule_and_is_clipped():
    mults = {0: 0.0, 1: 0.001, 2: 0.5, 3: 0.25, 4: 0.25}
    schedule = mults.__getitem__
    assert lr_ratio(schedule, 0) == 1.0            # no previous step
    assert lr_ratio(schedule, 1) == 1.0            # previous multiplier 0: no ratio
    assert lr_ratio(schedule, 2) == MAX_LR_RATIO   # 500x clipped
    assert lr_ratio(schedule, 3) == 0.5 and lr_ratio(schedule, 4) == 1.0


# ---------------------------------------------------------------- the RSSM (lib.predictive.dynamics)
def _oscillator(n_seq, T, rng):
    """x_t = features of a phase advanced by 0.4 * action; the action is known, x is noisy."""
    xs, acts = [], []
    for _ in range(n_seq):
        phi, x, a = rng.uniform(0, 2 * np.pi), [], []
        for _ in range(T):
            act = rng.uniform(0.5, 1.5)
            phi += 0.4 * act
            x.append([np.sin(phi), np.cos(phi), 0.5 * np.sin(2 * phi), *(0.05 * rng.normal(size=2))])
            a.append([act, 0.0])
        xs.append(x)
        acts.append(a)
    return torch.tensor(np.array(xs), dtype=torch.float32), torch.tensor(np.array(acts), dtype=torch.float32)


def test_rssm_recon_and_kl_decrease_and_imagination_beats_persistence(one_thread):
    from lib.predictive import RSSM, kl_gaussian

    # KL of diagonal Gaussians against torch.distributions
    mq, sq, mp, sp = torch.randn(4, 3), torch.rand(4, 3) + 0.2, torch.randn(4, 3), torch.rand(4, 3) + 0.2
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mq, sq), torch.distributions.Normal(mp, sp)).sum(-1)
    torch.testing.assert_close(kl_gaussian(mq, sq, mp, sp), ref)

    rng = np.random.default_rng(0)
    x, a = _oscillator(48, 10, rng)
    torch.manual_seed(0)
    model = RSSM(5, 2, deter=32, stoch=8, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    log = []
    for _ in range(240):
        idx = torch.randint(0, len(x), (8,))
        loss, parts = model.loss(x[idx], a[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.append(parts)
    recon = np.array([p["recon"] for p in log]).reshape(-1, 30).mean(1)
    kl = np.array([p["kl"] for p in log]).reshape(-1, 30).mean(1)
    assert recon[-1] < recon[0] - 3.0           # nats per step
    assert kl[-1] < 0.95 * kl.max()             # the prior catches up with the posterior
    # imagination: filter 6 steps of fresh sequences, imagine 3 ahead with the known actions
    xt, at = _oscillator(32, 9, np.random.default_rng(1))
    s = model.observe(xt[:, :6], at[:, :6], sample=False)
    mean, std = model.imagine(s["h"][:, -1], s["z"][:, -1], at[:, 6:])
    err = ((mean - xt[:, 6:]) ** 2)[..., :3].mean()
    persistence = ((xt[:, 5:6] - xt[:, 6:]) ** 2)[..., :3].mean()
    assert err < 0.5 * persistence
    assert std.shape == mean.shape and (std > 0).all()


def test_rssm_predictor_drives_the_trainer_and_moves_the_weights(one_thread):
    from lib.predictive import RSSMPredictor

    x, y = _regression(2)
    model = _mlp(2)
    seen = {}
    cfg = HybridConfig(TrainConfig(steps=40), warmup_steps=8, full_steps=10, max_predict_steps=3,
                       correct_steps=2, confidence_threshold=0.0, predict_length="max",
                       divergence_tolerance=10.0)
    pred = RSSMPredictor(window=24, seq_len=6, batch=4, min_fits=5, deter=16, stoch=4, hidden=16)
    res = HybridTrainer(model, torch.optim.AdamW(model.parameters(), lr=1e-2),
                        _record_params(_minibatch_loss(x, y), seen), cfg, predictor=pred).run()
    seen[cfg.total_steps] = _params(model)
    predicted = res.history[~res.history["backward"]]
    assert len(predicted) >= 6 and pred.n_fits >= 5
    for s, norm in zip(predicted["step"], predicted["update_norm"]):  # the weights moved by the applied delta
        assert float((seen[s + 1] - seen[s]).norm()) == pytest.approx(norm, rel=1e-4)
    assert predicted["predicted_loss"].notna().all()
    assert res.history.loc[res.history["real"] & (res.history["step"] > 20), "residual"].notna().all()
    assert res.memory["predictor_bytes"] > 0 and np.isfinite(res.history["loss"].dropna()).all()


# ---------------------------------------------------------------- the per-weight predictor
def _trajectory(predictor, steps, velocity):
    """Drive ``predictor`` along weights that move by ``velocity(t)`` at real step t."""
    params = [torch.zeros(6), torch.zeros(4, 3)]
    basis = UpdateBasis(params)
    predictor.bind(basis)
    g = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=g) for p in params]
    for t in range(steps):
        basis.snapshot()
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(velocity(t) * d)
        dots = basis.real_update()
        predictor.observe(Observation(step=t, loss=1.0, lr_mult=1.0, gap=1, coefficients=fit_coefficients(dots),
                                      update_norms=np.sqrt(dots["dd"]), grad_norms=np.ones(2)))
    return params, basis, torch.cat([d.flatten() for d in direction])


def test_perweight_starts_as_linear_extrapolation_and_learns_a_decelerating_trajectory():
    pred = PerWeightPredictor(history=3, every=1, jump=10, seed=0)
    params, basis, direction = _trajectory(pred, 12, lambda t: 0.01)
    assert not pred.ready  # never fitted
    # Untrained (zero output layer): the jump is jump x the last update, exactly.
    torch.testing.assert_close(pred.predict_jump([1.0] * 10), 10 * basis.u, rtol=1e-5, atol=1e-9)
    # A trajectory slowing by 0.8 per step: the next 10 steps move sum_{i=1..10} 0.8^i of the last update.
    decay = 0.8
    pred = PerWeightPredictor(history=3, every=1, jump=10, seed=0, fit_iters=4)
    params, basis, direction = _trajectory(pred, 16, lambda t: decay ** t)
    truth = basis.u * sum(decay ** i for i in range(1, 11))

    def error():
        return float((pred.predict_jump([1.0] * 10) - truth).norm() / truth.norm())

    before = error()
    assert before == pytest.approx((10 - truth.norm() / basis.u.norm()).item() / (truth.norm() / basis.u.norm()).item(),
                                   rel=1e-4)
    for _ in range(150):
        pred.fit()
    assert pred.ready and error() < 0.5 * before
    assert 0.0 <= pred.confidence() <= 1.0 and pred.nbytes > 0


def test_perweight_net_forecasts_in_chunks_what_its_forward_gives():
    net = PerWeightNet(5)
    torch.nn.init.normal_(net.net[-1].weight)   # a trained-looking output layer, not the zero one
    x = torch.randn(1000, 5, generator=torch.Generator().manual_seed(0))
    out = net.forecast(x, rows=77)
    assert out.shape == (1000,) and not out.requires_grad
    torch.testing.assert_close(out, net(x).detach())


def test_perweight_scores_its_confidence_on_a_sample_of_weights_within_its_noise():
    """The confidence's relative error of an untrained predictor (its forecast is jump x the last
    update, exactly) against the closed form over all weights: exact when the model has at most
    ``score_samples`` weights, within a few percent from a 4,096-weight sample otherwise."""
    g = torch.Generator().manual_seed(1)
    n = 60_000
    decay, direction = torch.rand(n, generator=g) * 0.3 + 0.7, torch.randn(n, generator=g)

    def drive(pred):
        params = [torch.zeros(n)]
        basis = UpdateBasis(params)
        pred.bind(basis)
        for t in range(12):
            basis.snapshot()
            with torch.no_grad():
                params[0].add_(decay ** t * direction)
            dots = basis.real_update()
            pred.observe(Observation(step=t, loss=1.0, lr_mult=1.0, gap=1, coefficients=fit_coefficients(dots),
                                     update_norms=np.sqrt(dots["dd"]), grad_norms=np.ones(1)))
        pred.fit()
        return pred

    exact = drive(PerWeightPredictor(history=2, every=1, jump=10, score_samples=n))
    i = exact._examples()[-1]
    target = exact.snapshots[i + 10][1] - exact.snapshots[i][1]
    closed = float((10 * exact.snapshots[i][2] - target).norm() / target.norm())
    assert exact.error == pytest.approx(closed, rel=1e-5)
    sampled = drive(PerWeightPredictor(history=2, every=1, jump=10, score_samples=4096))
    assert sampled.error != exact.error and sampled.error == pytest.approx(closed, rel=0.05)


def test_perweight_applies_one_jump_and_keeps_its_real_progress_coordinate():
    pred = PerWeightPredictor(history=2, every=2, jump=10)
    params, basis, _ = _trajectory(pred, 30, lambda t: 0.01)
    pred.fit()
    pred.start_rollout([1.0] * 11)
    before = torch.cat([p.detach().flatten() for p in params]).clone()
    norms = [basis.apply(pred.next_update(basis, k, 1.0)) for k in range(1, 11)]
    after = torch.cat([p.detach().flatten() for p in params])
    assert norms[0] > 0 and norms[1:] == [0.0] * 9
    torch.testing.assert_close(after - before, pred.jumped)
    # An imagined rollout on a shadow basis leaves the bookkeeping alone.
    jumped = pred.jumped.clone()
    pred.next_update(basis.shadow(), 1, 1.0)
    torch.testing.assert_close(pred.jumped, jumped)
    # The next snapshot subtracts the jump: R still advances by the real updates only.
    assert pred.snapshots[-1][0] == 30
    for kwargs, name in ((dict(jump=5), "jump"), (dict(jump=12, every=5), "jump"), (dict(history=1), "history"),
                         (dict(lr=0.0), "lr"), (dict(score_samples=0), "score_samples")):
        with pytest.raises(ValueError, match=name):
            PerWeightPredictor(**kwargs)
    with pytest.raises(ValueError, match="basis"):
        PerWeightPredictor().bind(None)

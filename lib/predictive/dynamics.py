"""How the predictive trainer represents and forecasts weight updates.

``UpdateBasis`` keeps, over a model's trainable parameters, the last applied update ``u`` and
an EMA ``m`` of applied updates; every predictor forecasts an update per tensor as ``a u + b m``
(two coefficients per tensor) and is scored from dot products alone (``fit_coefficients``,
``relative_residual``). ``Predictor`` is the protocol the trainer (``lib.predictive.trainer``)
calls; ``PREDICTORS`` names the predictors (``build_predictor``): ``NullPredictor``,
``LinearPredictor`` and ``EMAPredictor`` are the controls, ``RSSMPredictor`` the learned one.

The learned dynamics model (``RSSM``) is a recurrent state-space model in the Dreamer sense
(Hafner et al. 2019, 2021), small enough to run on a CPU beside the training loop:

    h_t = GRU(h_{t-1}, [z_{t-1}, a_t])              deterministic state
    p(z_t | h_t)         prior (diagonal Gaussian)  used when imagining ahead
    q(z_t | h_t, x_t)    posterior                  used when observing
    heads on [h_t, z_t]  Gaussian decoder of x_t (mean and log-variance)
    loss = -log p(x_t | h_t, z_t) + KL balance: alpha KL(sg(q) || p) + (1-alpha) KL(q || sg(p))

The observation ``x_t`` of a real optimizer step is: the normalised loss, and per parameter
tensor the two coefficients of the real update on the trainer's basis, the log update norm and
the log gradient norm. The action is ``[LR multiplier of the step, log(steps since the previous
real step)]`` (known in advance, so imagination can follow the LR schedule). Predicting ``k``
steps ahead = filtering the recent real steps with the posterior, then rolling the prior
forward; the decoded coefficients become the predicted update, the decoded loss the predicted
loss trajectory.
"""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.core import (
    Registry,
    check_fraction,
    check_int,
    check_number,
    check_positive,
    check_seed,
)

# The RSSM clips update coefficients to +-COEF_CLIP, observed and decoded: one outlier step must not
# dominate its features, nor a wild early forecast blow up the weights.
COEF_CLIP = 3.0
PREDICTORS: Registry[type[Predictor]] = Registry("predictor")


# --------------------------------------------------------------------------- update basis
class UpdateBasis:
    """Flat buffers over a model's trainable parameters: ``u`` (last applied update), ``m``
    (EMA of applied updates, decay ``beta``) and a scratch buffer for the pre-step snapshot.

    Memory: three float32 copies of the trainable parameters (``nbytes``).
    """

    def __init__(self, params: Sequence[Tensor], beta: float = 0.9):
        self.beta = check_number("beta", beta, 0.0, 1.0, strict_min=True, strict_max=True)
        self.params = list(params)
        if not self.params:
            raise ValueError("params must hold at least one tensor")
        device = self.params[0].device
        self.sizes = [p.numel() for p in self.params]
        n = sum(self.sizes)
        self.u = torch.zeros(n, device=device, dtype=torch.float32)
        self.m = torch.zeros_like(self.u)
        self.scratch = torch.zeros_like(self.u)
        self.n_updates = 0  # applied updates folded into m (for bias correction)

    @property
    def n_tensors(self) -> int:
        return len(self.sizes)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in (self.u, self.m, self.scratch))

    def _views(self, flat: Tensor) -> list[Tensor]:
        return [v.view_as(p) for v, p in zip(flat.split(self.sizes), self.params)]

    def segment_dot(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-tensor dot products of two flat vectors, shape [n_tensors] (no temporaries)."""
        return torch.stack([torch.dot(a, b) for a, b in zip(x.split(self.sizes), y.split(self.sizes))])

    def shadow(self) -> UpdateBasis:
        """A copy with its own ``u`` and ``m`` (no snapshot buffer) for imagined rollouts that
        must leave this basis and the weights untouched."""
        other = copy.copy(self)
        other.u, other.m, other.scratch = self.u.clone(), self.m.clone(), torch.empty(0)
        return other

    def snapshot(self) -> None:
        """Copy the current parameters into the scratch buffer (before a real step)."""
        with torch.no_grad():
            torch._foreach_copy_(self._views(self.scratch), [p.detach() for p in self.params])

    def real_update(self) -> dict[str, np.ndarray]:
        """After a real step: Δ = params - snapshot. Returns per-tensor dot products of Δ with
        the basis *before* it absorbs Δ (``dd, du, dm, uu, um, mm``), then folds Δ in."""
        with torch.no_grad():
            torch._foreach_sub_(self._views(self.scratch), [p.detach() for p in self.params])
            delta = self.scratch.neg_()
            pairs = {"dd": (delta, delta), "du": (delta, self.u), "dm": (delta, self.m),
                     "uu": (self.u, self.u), "um": (self.u, self.m), "mm": (self.m, self.m)}
            stacked = torch.stack([self.segment_dot(*p) for p in pairs.values()]).double().cpu().numpy()
            self.absorb(delta)
        return dict(zip(pairs, stacked))

    def absorb(self, delta: Tensor) -> None:
        """Fold an applied flat update into the basis: ``u <- delta``, ``m <- beta m + (1-beta) delta``.

        The weights are not touched (``apply`` does both); a ``shadow`` basis absorbs imagined
        updates this way.
        """
        # The scratch buffer holds delta after a real step: swapping makes the old u the new
        # scratch instead of copying a parameter-sized tensor.
        self.m.mul_(self.beta).add_(delta, alpha=1.0 - self.beta)
        if delta is self.scratch:
            self.u, self.scratch = self.scratch, self.u
        else:
            self.u.copy_(delta)
        self.n_updates += 1

    def combine(self, coefficients: np.ndarray) -> Tensor:
        """Flat update ``a_i u + b_i m`` from per-tensor coefficients [n_tensors, 2]."""
        c = torch.as_tensor(np.asarray(coefficients, dtype=np.float32), device=self.u.device)
        if c.shape != (self.n_tensors, 2):
            raise ValueError(f"coefficients must have shape ({self.n_tensors}, 2), got {tuple(c.shape)}")
        out = torch.empty_like(self.u)
        # Tensor by tensor with scalar coefficients: spreading them over the weights first
        # (repeat_interleave) costs 6x as much on a CPU.
        for o, u, m, (a, b) in zip(out.split(self.sizes), self.u.split(self.sizes), self.m.split(self.sizes),
                                   c.tolist()):
            torch.mul(u, a, out=o).add_(m, alpha=b)
        return out

    def apply(self, delta: Tensor) -> float:
        """Add a flat update to the parameters in place, fold it into the basis; returns its norm."""
        if delta.shape != self.u.shape:
            raise ValueError(f"delta must be flat with {self.u.numel()} elements, got {tuple(delta.shape)}")
        with torch.no_grad():
            torch._foreach_add_([p.data for p in self.params], self._views(delta.to(self.u.dtype)))
            self.absorb(delta)
        return float(delta.norm())

    def ema_bias_correction(self) -> float:
        """1 / (1 - beta^n): scale that turns the zero-initialised EMA into a mean."""
        return 1.0 / (1.0 - self.beta ** max(self.n_updates, 1))


def fit_coefficients(dots: dict[str, np.ndarray], ridge: float = 1e-6) -> np.ndarray:
    """Least-squares ``(a, b)`` per tensor with Δ ≈ a u + b m, from dot products [n_tensors, 2]."""
    uu, um, mm, du, dm = (dots[k] for k in ("uu", "um", "mm", "du", "dm"))
    lam = ridge * (uu + mm) + 1e-30
    det = (uu + lam) * (mm + lam) - um * um
    a = np.where(det > 0, ((mm + lam) * du - um * dm) / np.where(det > 0, det, 1.0), 0.0)
    b = np.where(det > 0, ((uu + lam) * dm - um * du) / np.where(det > 0, det, 1.0), 0.0)
    return np.stack([a, b], axis=1)


def relative_residual(dots: dict[str, np.ndarray], coefficients: np.ndarray) -> float:
    """||Σ_i (a_i u_i + b_i m_i) - Δ|| / ||Δ|| over all tensors, from dot products only.

    1.0 is what the null predictor scores; below 1 the forecast explains part of the update.
    """
    a, b = np.asarray(coefficients, dtype=np.float64).T
    sq = (a * a * dots["uu"] + b * b * dots["mm"] + dots["dd"] + 2 * a * b * dots["um"]
          - 2 * a * dots["du"] - 2 * b * dots["dm"])
    total = float(dots["dd"].sum())
    return math.sqrt(max(float(sq.sum()), 0.0) / total) if total > 0 else float("nan")


# --------------------------------------------------------------------------- predictors
@dataclass
class Observation:
    """What a predictor sees after a real step ``step`` (global optimizer-step index)."""

    step: int
    loss: float
    lr_mult: float
    gap: int                      # steps since the previous real step (1, or K+1 after Predict)
    coefficients: np.ndarray      # [n_tensors, 2] least-squares fit of the real Δ on the basis
    update_norms: np.ndarray      # [n_tensors] ||Δ||
    grad_norms: np.ndarray        # [n_tensors] ||g|| before clipping
    residual: float = float("nan")  # relative residual of the predictor's forecast of this Δ
    horizon: int = 1              # horizon of that forecast


class Predictor:
    """Protocol every predictor follows (the trainer calls nothing else).

    ``bind(basis)`` once; ``observe`` after each real step; ``fit`` on Full/Warmup steps (online fitting);
    ``start_rollout`` when a Predict phase begins (``lr_mults`` of the next K+1 steps);
    ``next_update(basis, k, lr_ratio)`` the flat delta for the k-th step of the rollout
    (k = 1..K), or ``None`` for "no prediction"; ``confidence()`` in [0, 1];
    ``nbytes`` the memory its own state adds.
    """

    name = "predictor"

    def bind(self, basis: UpdateBasis | None) -> None:
        """Called once by the trainer with the basis it maintains (None for plain runs)."""
        self.basis = basis

    def observe(self, obs: Observation) -> None:  # pragma: no cover - trivial default
        pass

    def fit(self) -> None:
        pass

    def start_rollout(self, lr_mults: Sequence[float]) -> None:
        pass

    def next_update(self, basis: UpdateBasis, k: int, lr_ratio: float) -> Tensor | None:
        raise NotImplementedError

    def forecast_coefficients(self, k: int, lr_ratio: float) -> np.ndarray | None:
        """Coefficients it would use for horizon ``k`` (None: cannot be scored from dots)."""
        return None

    def confidence(self) -> float:
        return 1.0

    @property
    def ready(self) -> bool:
        return True

    @property
    def nbytes(self) -> int:
        return 0


class BasisPredictor(Predictor):
    """Predicts ``a u + b m`` per tensor; confidence = 1 - EMA of measured relative residuals.

    Residuals come from two places: every real step scores the 1-step forecast; the first
    real step after a Predict phase of length K scores the forecast at horizon K+1. The
    confidence uses the worse of the two (an unmeasured long-horizon residual counts as the
    1-step one). ``residual_decay`` is the EMA decay of both.
    """

    def __init__(self, residual_decay: float = 0.8):
        self.residual_decay = check_fraction("residual_decay", residual_decay, strict_max=True)
        self.r_short = float("nan")
        self.r_long = float("nan")
        self.n_obs = 0

    def coefficients(self, k: int, lr_ratio: float) -> np.ndarray:
        raise NotImplementedError

    def forecast_coefficients(self, k, lr_ratio):
        return self.coefficients(k, lr_ratio) if self.ready else None

    def next_update(self, basis, k, lr_ratio):
        return basis.combine(self.coefficients(k, lr_ratio))

    def observe(self, obs: Observation) -> None:
        self.n_obs += 1
        if math.isfinite(obs.residual):
            r = min(obs.residual, 2.0)
            attr = "r_short" if obs.horizon == 1 else "r_long"
            old = getattr(self, attr)
            setattr(self, attr, r if not math.isfinite(old) else
                    self.residual_decay * old + (1 - self.residual_decay) * r)

    def confidence(self) -> float:
        if not math.isfinite(self.r_short):
            return 0.0
        worst = max(self.r_short, self.r_long) if math.isfinite(self.r_long) else self.r_short
        return float(np.clip(1.0 - worst, 0.0, 1.0))

    @property
    def ready(self) -> bool:
        return self.n_obs >= 2


@PREDICTORS.register("null", set_name=True)
class NullPredictor(BasisPredictor):
    """Zero update: a predicted step is a skipped step (the control every method must beat)."""

    def coefficients(self, k, lr_ratio):
        return np.zeros((self.basis.n_tensors, 2))


@PREDICTORS.register("linear", set_name=True)
class LinearPredictor(BasisPredictor):
    """Repeat the last applied update, scaled by the LR ratio of consecutive steps."""

    def coefficients(self, k, lr_ratio):
        c = np.zeros((self.basis.n_tensors, 2))
        c[:, 0] = lr_ratio
        return c


@PREDICTORS.register("ema", set_name=True)
class EMAPredictor(BasisPredictor):
    """Apply the (bias-corrected) EMA of recent applied updates, scaled by the LR ratio."""

    def coefficients(self, k, lr_ratio):
        c = np.zeros((self.basis.n_tensors, 2))
        c[:, 1] = lr_ratio * self.basis.ema_bias_correction()
        return c


def build_predictor(name: str, **kwargs) -> Predictor | None:
    """The predictor registered as ``name`` (``PREDICTORS``) built with ``kwargs``, or None for
    "plain" (plain training: the trainer keeps no basis)."""
    if name == "plain":
        return None
    if not isinstance(name, str) or name not in PREDICTORS:
        raise ValueError(f"predictor must be one of {['plain', *PREDICTORS]}, got {name!r}")
    return PREDICTORS.build(name, **kwargs)


# --------------------------------------------------------------------------- the RSSM
def _gaussian(params: Tensor, min_std: float = 0.1) -> tuple[Tensor, Tensor]:
    mean, raw = params.chunk(2, dim=-1)
    return mean, F.softplus(raw) + min_std


def kl_gaussian(mean_q: Tensor, std_q: Tensor, mean_p: Tensor, std_p: Tensor) -> Tensor:
    """KL(q || p) of diagonal Gaussians, summed over the last dimension (nats)."""
    var_q, var_p = std_q ** 2, std_p ** 2
    return 0.5 * (torch.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1.0).sum(-1)


class RSSM(nn.Module):
    """Recurrent state-space model. Sizes: ``obs_dim`` features, ``action_dim`` actions,
    ``deter`` GRU width, ``stoch`` latent width, ``hidden`` MLP width."""

    def __init__(self, obs_dim: int, action_dim: int = 2, deter: int = 64, stoch: int = 16,
                 hidden: int = 64, kl_balance: float = 0.8, free_nats: float = 0.0):
        super().__init__()
        obs_dim, action_dim, deter, stoch, hidden = (
            check_int(name, value, 1) for name, value in (("obs_dim", obs_dim), ("action_dim", action_dim),
                                                          ("deter", deter), ("stoch", stoch), ("hidden", hidden)))
        kl_balance = check_fraction("kl_balance", kl_balance)
        free_nats = check_positive("free_nats", free_nats, allow_zero=True)
        self.obs_dim, self.deter, self.stoch = obs_dim, deter, stoch
        self.kl_balance, self.free_nats = kl_balance, free_nats
        self.embed = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ELU())
        self.pre_gru = nn.Sequential(nn.Linear(stoch + action_dim, hidden), nn.ELU())
        self.gru = nn.GRUCell(hidden, deter)
        self.prior_head = nn.Sequential(nn.Linear(deter, hidden), nn.ELU(), nn.Linear(hidden, 2 * stoch))
        self.post_head = nn.Sequential(nn.Linear(deter + hidden, hidden), nn.ELU(), nn.Linear(hidden, 2 * stoch))
        self.decoder = nn.Sequential(nn.Linear(deter + stoch, hidden), nn.ELU(), nn.Linear(hidden, 2 * obs_dim))

    def initial(self, batch: int) -> tuple[Tensor, Tensor]:
        return torch.zeros(batch, self.deter), torch.zeros(batch, self.stoch)

    def _step(self, h: Tensor, z: Tensor, action: Tensor) -> Tensor:
        return self.gru(self.pre_gru(torch.cat([z, action], -1)), h)

    def decode(self, h: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of x given the state."""
        mean, logvar = self.decoder(torch.cat([h, z], -1)).chunk(2, -1)
        return mean, logvar.clamp(-6.0, 4.0)

    def observe(self, obs: Tensor, actions: Tensor, sample: bool = True):
        """Filter a batch of sequences. obs [B, T, D], actions [B, T, A] (action leading to x_t).

        Returns per-step (h, z, prior (mean, std), posterior (mean, std)) stacked on dim 1.
        """
        if obs.dim() != 3 or actions.dim() != 3 or obs.shape[:2] != actions.shape[:2]:
            raise ValueError(f"obs [B,T,D] and actions [B,T,A] must agree, got {tuple(obs.shape)} and {tuple(actions.shape)}")
        h, z = self.initial(obs.shape[0])
        emb = self.embed(obs)
        out = {k: [] for k in ("h", "z", "prior_mean", "prior_std", "post_mean", "post_std")}
        for t in range(obs.shape[1]):
            h = self._step(h, z, actions[:, t])
            pm, ps = _gaussian(self.prior_head(h))
            qm, qs = _gaussian(self.post_head(torch.cat([h, emb[:, t]], -1)))
            z = qm + qs * torch.randn_like(qs) if sample else qm
            for key, value in zip(out, (h, z, pm, ps, qm, qs)):
                out[key].append(value)
        return {k: torch.stack(v, 1) for k, v in out.items()}

    def loss(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction NLL (nats per step, summed over features) + balanced KL (nats per step)."""
        s = self.observe(obs, actions)
        mean, logvar = self.decode(s["h"], s["z"])
        recon = 0.5 * (logvar + (obs - mean) ** 2 / logvar.exp() + math.log(2 * math.pi)).sum(-1).mean()
        sg = lambda x: x.detach()
        kl_prior = kl_gaussian(sg(s["post_mean"]), sg(s["post_std"]), s["prior_mean"], s["prior_std"])
        kl_post = kl_gaussian(s["post_mean"], s["post_std"], sg(s["prior_mean"]), sg(s["prior_std"]))
        kl_value = kl_post.mean()
        kl = (self.kl_balance * kl_prior.clamp(min=self.free_nats).mean()
              + (1 - self.kl_balance) * kl_post.clamp(min=self.free_nats).mean())
        mse = float(((obs - mean.detach()) ** 2).mean())
        return recon + kl, {"recon": float(recon.detach()), "kl": float(kl_value.detach()), "mse": mse}

    @torch.no_grad()
    def imagine(self, h: Tensor, z: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Roll the prior forward from (h, z) [B, ·] through actions [B, K, A] (prior means).

        Returns decoded means and standard deviations [B, K, D].
        """
        means, stds = [], []
        for t in range(actions.shape[1]):
            h = self._step(h, z, actions[:, t])
            z, _ = _gaussian(self.prior_head(h))
            mean, logvar = self.decode(h, z)
            means.append(mean)
            stds.append((0.5 * logvar).exp())
        return torch.stack(means, 1), torch.stack(stds, 1)


@PREDICTORS.register("rssm", set_name=True)
class RSSMPredictor(BasisPredictor):
    """Predict per-tensor update coefficients (and the loss) with an RSSM fitted online.

    ``window`` real steps are kept; each ``fit()`` runs ``fit_iters`` Adam steps on
    ``batch`` random sub-sequences of ``seq_len`` steps. Confidence is the residual-based one
    of ``BasisPredictor`` (measured on real steps, never self-reported). Runs on the CPU in
    float32 whatever the training device (it is tiny); ``fit_seconds`` and
    ``predict_seconds`` accumulate its cost.
    """


    def __init__(self, window: int = 64, seq_len: int = 12, batch: int = 8, fit_iters: int = 1,
                 lr: float = 3e-3, deter: int = 64, stoch: int = 16, hidden: int = 64,
                 kl_balance: float = 0.8, min_fits: int = 5, seed: int = 0, **kw):
        super().__init__(**kw)
        window, seq_len, batch, fit_iters, min_fits = (
            check_int(name, value, 1) for name, value in (("window", window), ("seq_len", seq_len), ("batch", batch),
                                                          ("fit_iters", fit_iters), ("min_fits", min_fits)))
        lr = check_positive("lr", lr)
        seed = check_seed("seed", seed)
        if seq_len >= window:
            raise ValueError(f"seq_len={seq_len} must be smaller than window={window}")
        self.window, self.seq_len, self.batch, self.fit_iters = window, seq_len, batch, fit_iters
        self.lr, self.min_fits = lr, min_fits
        self.sizes = {"deter": deter, "stoch": stoch, "hidden": hidden, "kl_balance": kl_balance}
        self.gen = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.raw: deque = deque(maxlen=window)       # per real step: feature vector (unnormalised)
        self.actions: deque = deque(maxlen=window)
        self.model: RSSM | None = None
        self.opt = None
        self.n_fits = 0
        self.fit_log: list[dict] = []
        self.fit_seconds = 0.0
        self.predict_seconds = 0.0
        self._rollout: np.ndarray | None = None
        self._rollout_loss: np.ndarray | None = None
        self._norm = None

    # ---- features
    def _features(self, obs: Observation) -> np.ndarray:
        coef = np.clip(obs.coefficients, -COEF_CLIP, COEF_CLIP)
        return np.concatenate([[obs.loss], coef[:, 0], coef[:, 1],
                               np.log(obs.update_norms + 1e-12), np.log(obs.grad_norms + 1e-12)])

    def _normalise(self, raw: np.ndarray) -> np.ndarray:
        mu, sd = self._norm
        return (raw - mu) / sd

    def _refresh_norm(self) -> None:
        data = np.stack(self.raw)
        n = (data.shape[1] - 1) // 4
        mu, sd = data.mean(0), data.std(0) + 1e-3
        mu[1:1 + 2 * n], sd[1:1 + 2 * n] = 0.0, 1.0  # coefficients stay in their own units
        self._norm = (mu, sd)

    def observe(self, obs: Observation) -> None:
        super().observe(obs)
        self.raw.append(self._features(obs))
        self.actions.append(np.array([obs.lr_mult, math.log(max(obs.gap, 1))]))
        self._rollout = None
        if self.model is None:
            torch.manual_seed(self.seed)  # the dynamics model's init is seeded on its own
            self.model = RSSM(len(self.raw[-1]), 2, **self.sizes)
            self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)

    # ---- fitting
    def fit(self) -> None:
        if self.model is None or len(self.raw) <= self.seq_len:
            return
        t0 = time.perf_counter()
        self._refresh_norm()
        x = torch.as_tensor(self._normalise(np.stack(self.raw)), dtype=torch.float32)
        a = torch.as_tensor(np.stack(self.actions), dtype=torch.float32)
        n_starts = len(x) - self.seq_len + 1
        for _ in range(self.fit_iters):
            starts = torch.randint(0, n_starts, (self.batch,), generator=self.gen)
            idx = starts[:, None] + torch.arange(self.seq_len)[None]
            loss, parts = self.model.loss(x[idx], a[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 100.0)
            self.opt.step()
            self.fit_log.append(parts)
        self.n_fits += 1
        self.fit_seconds += time.perf_counter() - t0

    @property
    def ready(self) -> bool:
        return self.n_fits >= self.min_fits and super().ready

    # ---- prediction
    def imagine(self, lr_mults: Sequence[float], first_gap: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients [K, n_tensors, 2] and predicted losses [K] for the next K steps whose
        LR multipliers are ``lr_mults`` (the first one ``first_gap`` steps after the last real one)."""
        t0 = time.perf_counter()
        n = (self.model.obs_dim - 1) // 4
        x = torch.as_tensor(self._normalise(np.stack(self.raw)[-self.seq_len:]), dtype=torch.float32)
        a = torch.as_tensor(np.stack(self.actions)[-self.seq_len:], dtype=torch.float32)
        acts = torch.tensor([[m, math.log(first_gap if i == 0 else 1)] for i, m in enumerate(lr_mults)],
                            dtype=torch.float32)
        with torch.no_grad():
            s = self.model.observe(x[None], a[None], sample=False)
            mean, _ = self.model.imagine(s["h"][:, -1], s["z"][:, -1], acts[None])
        mean = mean[0].numpy()
        mu, sd = self._norm
        coef = np.stack([mean[:, 1:1 + n], mean[:, 1 + n:1 + 2 * n]], -1).clip(-COEF_CLIP, COEF_CLIP)
        loss = mean[:, 0] * sd[0] + mu[0]
        self.predict_seconds += time.perf_counter() - t0
        return coef, loss

    def start_rollout(self, lr_mults):
        self._rollout, self._rollout_loss = self.imagine(list(lr_mults))

    def coefficients(self, k, lr_ratio):
        if self._rollout is not None and k <= len(self._rollout):
            return self._rollout[k - 1]
        next_mult = float(self.actions[-1][0]) * lr_ratio
        return self.imagine([next_mult], first_gap=k)[0][0]

    def predicted_loss(self, k: int) -> float:
        if self._rollout_loss is not None and k <= len(self._rollout_loss):
            return float(self._rollout_loss[k - 1])
        return float("nan")

    @property
    def nbytes(self) -> int:
        if self.model is None:
            return 0
        n_params = sum(p.numel() for p in self.model.parameters())
        history = sum(v.nbytes for v in self.raw) + sum(v.nbytes for v in self.actions)
        return 3 * 4 * n_params + history  # weights + Adam's two moments (fp32) + history

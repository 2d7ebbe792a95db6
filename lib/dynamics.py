"""The learned dynamics model of the predictive trainer: a small RSSM over training-state features.

An RSSM in the Dreamer sense (Hafner et al. 2019, 2021), scaled down to run on a CPU beside
the training loop:

    h_t = GRU(h_{t-1}, [z_{t-1}, a_t])              deterministic state
    p(z_t | h_t)         prior (diagonal Gaussian)  used when imagining ahead
    q(z_t | h_t, x_t)    posterior                  used when observing
    heads on [h_t, z_t]  Gaussian decoder of x_t (mean and log-variance)
    loss = -log p(x_t | h_t, z_t) + KL balance: alpha KL(sg(q) || p) + (1-alpha) KL(q || sg(p))

The observation ``x_t`` of a real optimizer step is: the normalised loss, and per parameter
tensor the two coefficients of the real update on the trainer's basis (``a u + b m``, see
``lib.predictive.UpdateBasis``), the log update norm and the log gradient norm. The action is
``[LR multiplier of the step, log(steps since the previous real step)]`` (known in advance,
so imagination can follow the LR schedule). Predicting ``k`` steps ahead = filtering the
recent real steps with the posterior, then rolling the prior forward; the decoded
coefficients become the predicted update, the decoded loss the predicted loss trajectory.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.predictive import BasisPredictor, Observation

COEF_CLIP = 3.0


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
        for name, value in (("obs_dim", obs_dim), ("action_dim", action_dim), ("deter", deter),
                            ("stoch", stoch), ("hidden", hidden)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= kl_balance <= 1.0:
            raise ValueError(f"kl_balance must be in [0, 1], got {kl_balance!r}")
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


class RSSMPredictor(BasisPredictor):
    """Predict per-tensor update coefficients (and the loss) with an RSSM fitted online.

    ``window`` real steps are kept; each ``fit()`` runs ``fit_iters`` Adam steps on
    ``batch`` random sub-sequences of ``seq_len`` steps. Confidence is the residual-based one
    of ``BasisPredictor`` (measured on real steps, never self-reported). Runs on the CPU in
    float32 whatever the training device (it is tiny); ``fit_seconds`` and
    ``predict_seconds`` accumulate its cost.
    """

    name = "rssm"

    def __init__(self, window: int = 64, seq_len: int = 12, batch: int = 8, fit_iters: int = 1,
                 lr: float = 3e-3, deter: int = 64, stoch: int = 16, hidden: int = 64,
                 kl_balance: float = 0.8, min_fits: int = 10, seed: int = 0, **kw):
        super().__init__(**kw)
        for name, value in (("window", window), ("seq_len", seq_len), ("batch", batch),
                            ("fit_iters", fit_iters), ("min_fits", min_fits)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
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

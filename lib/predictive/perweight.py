"""A per-weight predictor: long jumps of every weight, forecast by a small network shared by all
weights and trained online on the run's own history (in the spirit of WNN, Jang et al. 2023,
and NiNo, Knyazev et al. 2025, which are pre-trained offline; this one learns during the run).

Every ``every`` real optimizer steps the predictor snapshots the weights. Its coordinate is the
*real-progress* trajectory ``R = w - (sum of the jumps it applied)``: what the optimizer alone
moved the weights, indexed by real steps. Per weight, the features at a snapshot are the last
real update ``u`` and the bias-corrected EMA ``m`` of updates (the trainer's basis), the last
``history - 1`` displacements of ``R`` between snapshots, all in units of that tensor's RMS of
``u``, and the LR ratio of the coming ``jump`` steps to the last window's. The target is the
displacement of ``R`` over the next ``jump`` real steps, in the same units. The forecast is the
LR-scaled linear extrapolation ``jump * u`` plus a correction from a two-layer MLP over those
features (its output layer starts at zero, so an untrained predictor is the linear control);
the MLP trains on every past snapshot whose ``jump``-ahead target is known, a random sample of
weights per fit.

In a Predict phase of ``jump`` steps the whole forecast jump is applied on the first step
(``next_update`` with ``k == 1``) and the other steps add nothing: ``jump`` optimizer steps are
replaced by one jump. Its confidence is ``1 -`` the relative error of its forecast on each
newest example before it is trained on (an EMA), measured, never self-reported.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lib.core import check_int, check_positive, check_seed
from lib.predictive.dynamics import PREDICTORS, Observation, Predictor, UpdateBasis

__all__ = ["PerWeightPredictor", "PerWeightNet"]


class PerWeightNet(nn.Module):
    """The shared per-weight network: ``features`` inputs -> ``hidden`` (GELU) -> 1. The output
    layer is zero-initialised, so the initial correction is exactly 0."""

    def __init__(self, features: int, hidden: int = 32):
        super().__init__()
        features, hidden = check_int("features", features, 1), check_int("hidden", hidden, 1)
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)

    @torch.no_grad()
    def forecast(self, x: Tensor, rows: int = 1 << 16) -> Tensor:
        """``forward`` without gradients, ``rows`` weights at a time: over a whole model the
        hidden activations [n, hidden] would not fit in cache, and chunks run 4x faster."""
        return torch.cat([self(chunk) for chunk in x.split(rows)])


@PREDICTORS.register("perweight", set_name=True)
class PerWeightPredictor(Predictor):
    """Per-weight jumps of ``jump`` real steps from the last ``history`` snapshots taken every
    ``every`` real steps (``jump`` a multiple of ``every``, at least 10).

    ``hidden``: width of the shared MLP; each ``fit`` runs ``fit_iters`` Adam steps (``lr``) on
    ``samples`` randomly drawn (snapshot, weight) examples; ``max_snapshots`` bounds the memory
    (snapshots are float32 copies of the trainable parameters). The confidence's relative error
    is measured on ``score_samples`` randomly drawn weights of each new snapshot (all of them in
    a model that has fewer): a sample of 2^18 pins a relative error to well under 1% of itself,
    and scoring every weight of a 5M-weight model costs 3x its training step on a CPU.
    ``fit_seconds`` and ``predict_seconds`` accumulate its cost.
    """

    jump_predictor = True  # a Predict phase holds one jump, not per-step updates

    def __init__(self, history: int = 4, every: int = 5, jump: int = 10, hidden: int = 32,
                 fit_iters: int = 4, samples: int = 4096, lr: float = 1e-2, max_snapshots: int = 16,
                 residual_decay: float = 0.5, score_samples: int = 1 << 18, seed: int = 0):
        self.history = check_int("history", history, 2)
        self.every = check_int("every", every, 1)
        self.jump = check_int("jump", jump, 10)
        if self.jump % self.every:
            raise ValueError(f"jump={jump} must be a multiple of every={every} (targets are snapshots)")
        self.ahead = self.jump // self.every
        self.fit_iters = check_int("fit_iters", fit_iters, 1)
        self.samples = check_int("samples", samples, 1)
        self.score_samples = check_int("score_samples", score_samples, 1)
        self.max_snapshots = check_int("max_snapshots", max_snapshots, self.history + self.ahead)
        self.lr = check_positive("lr", lr)
        self.residual_decay = float(np.clip(check_positive("residual_decay", residual_decay), 0.0, 0.999))
        self.seed = check_seed("seed", seed)
        torch.manual_seed(self.seed)
        # Inputs: u, m, history-1 displacements and the LR ratio.
        self.net = PerWeightNet(self.history + 2, check_int("hidden", hidden, 1))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.snapshots: deque = deque(maxlen=self.max_snapshots)   # (real step count, R, u, m) on CPU
        self.lr_mults: list[float] = []                              # LR multiplier of each real step
        self.real_count = 0
        self.jumped: Tensor | None = None
        self.n_fits = 0
        self.error = float("nan")
        self.fit_seconds = 0.0
        self.predict_seconds = 0.0
        self._jump: Tensor | None = None
        self._checked = -1

    # ---- the trajectory
    def _flat(self) -> Tensor:
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1).float() for p in self.basis.params])

    def bind(self, basis: UpdateBasis | None) -> None:
        if basis is None:
            raise ValueError("the per-weight predictor needs the trainer's basis (its parameters)")
        super().bind(basis)
        self.sizes = list(basis.sizes)
        self.jumped = torch.zeros(sum(self.sizes), device=basis.u.device)
        self._ends = torch.tensor(self.sizes).cumsum(0)   # a flat index's tensor: searchsorted

    def observe(self, obs: Observation) -> None:
        self.real_count += 1
        self.lr_mults.append(float(obs.lr_mult))
        if self.real_count % self.every == 0:
            b = self.basis
            u = b.u.detach().cpu().clone()
            self.snapshots.append((self.real_count, (self._flat() - self.jumped).cpu(), u,
                                   (b.m * b.ema_bias_correction()).detach().cpu(), self._rms(u)))

    # ---- features
    def _rms(self, latest: Tensor) -> Tensor:
        """Per-tensor RMS of ``latest`` (a snapshot's last real update), [n_tensors]: its scale."""
        norms = torch.stack([torch.linalg.vector_norm(v, dtype=torch.float64) for v in latest.split(self.sizes)])
        return (norms / torch.tensor(self.sizes, dtype=torch.float64).sqrt()).float().clamp(min=1e-12)

    def _per_weight(self, values: Tensor, idx: Tensor | None) -> Tensor:
        """Per-tensor ``values`` spread over the flat weights ``idx`` (all: None)."""
        if idx is None:
            return torch.cat([v.expand(n) for v, n in zip(values, self.sizes)])
        return values[torch.searchsorted(self._ends, idx, right=True)]

    def _lr_ratio(self, count: int, future: Sequence[float]) -> float:
        past = self.lr_mults[max(count - self.every, 0):count]
        past_mean = float(np.mean(past)) if past else 0.0
        return float(np.mean(future)) / past_mean if past_mean > 0 else 1.0

    def _features(self, i: int, idx: Tensor | None, lr_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
        """Features [n, history + 2], the linear baseline [n] and the scale [n] at snapshot ``i``."""
        def pick(v: Tensor) -> Tensor:
            return v if idx is None else v[idx]

        R = [pick(self.snapshots[j][1]) for j in range(i - self.history + 1, i + 1)]
        _, _, u, m, rms = self.snapshots[i]
        diffs = [R[j + 1] - R[j] for j in range(len(R) - 1)][::-1]  # newest first
        scale = self._per_weight(rms, idx)
        vectors = [pick(u), pick(m), *diffs]
        x = torch.stack([v / scale for v in vectors] + [torch.full_like(scale, lr_ratio)], dim=-1)
        baseline = lr_ratio * self.jump * x[:, 0]
        return x.clamp(-50.0, 50.0), baseline, scale

    def _examples(self) -> list[int]:
        """Snapshot indices with ``history`` snapshots behind and a target ``ahead`` snapshots later."""
        n = len(self.snapshots)
        return [i for i in range(self.history - 1, n - self.ahead)]

    def _target(self, i: int, idx: Tensor | None = None) -> Tensor:
        """Displacement of ``R`` over the ``jump`` real steps after snapshot ``i`` (at ``idx``)."""
        later, now = self.snapshots[i + self.ahead][1], self.snapshots[i][1]
        return later - now if idx is None else later[idx] - now[idx]

    def _past_ratio(self, i: int) -> float:
        count = self.snapshots[i][0]
        return self._lr_ratio(count, self.lr_mults[count:count + self.jump])

    # ---- fitting
    def fit(self) -> None:
        examples = self._examples()
        if not examples:
            return
        t0 = time.perf_counter()
        newest = examples[-1]
        if self._checked != self.snapshots[newest][0]:  # score the newest example before training on it
            self._checked = self.snapshots[newest][0]
            n_weights = sum(self.sizes)
            idx = (None if n_weights <= self.score_samples
                   else torch.randint(n_weights, (self.score_samples,), generator=self.gen))
            with torch.no_grad():
                x, base, scale = self._features(newest, idx, self._past_ratio(newest))
                pred = (base + self.net.forecast(x)) * scale
                target = self._target(newest, idx)
                err = float((pred - target).norm() / target.norm().clamp(min=1e-30))
            self.error = err if not math.isfinite(self.error) else (
                self.residual_decay * self.error + (1 - self.residual_decay) * err)
        n_weights = sum(self.sizes)
        for _ in range(self.fit_iters):
            i = examples[int(torch.randint(len(examples), (1,), generator=self.gen))]
            idx = torch.randint(n_weights, (min(self.samples, n_weights),), generator=self.gen)
            x, base, scale = self._features(i, idx, self._past_ratio(i))
            y = self._target(i, idx) / scale
            loss = torch.nn.functional.huber_loss(base + self.net(x), y.clamp(-20.0 * self.jump, 20.0 * self.jump))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.n_fits += 1
        self.fit_seconds += time.perf_counter() - t0

    @property
    def ready(self) -> bool:
        return self.n_fits >= 1 and len(self.snapshots) >= self.history

    def confidence(self) -> float:
        return float(np.clip(1.0 - self.error, 0.0, 1.0)) if math.isfinite(self.error) else 0.0

    # ---- prediction
    def predict_jump(self, lr_mults: Sequence[float]) -> Tensor:
        """The flat jump over the next ``jump`` real steps from the newest snapshot, given the
        LR multipliers of the steps it replaces."""
        t0 = time.perf_counter()
        i = len(self.snapshots) - 1
        ratio = self._lr_ratio(self.snapshots[i][0], list(lr_mults)[:self.jump])
        with torch.no_grad():
            x, base, scale = self._features(i, None, ratio)
            jump = ((base + self.net.forecast(x)) * scale).to(self.basis.u.device)
        self.predict_seconds += time.perf_counter() - t0
        return jump

    def start_rollout(self, lr_mults: Sequence[float]) -> None:
        self._jump = self.predict_jump(lr_mults) if self.ready else None

    def next_update(self, basis: UpdateBasis, k: int, lr_ratio: float) -> Tensor | None:
        if k > 1:
            return torch.zeros_like(basis.u)
        jump = self._jump if self._jump is not None else torch.zeros_like(basis.u)
        if basis is self.basis:  # a real jump (not an imagined rollout on a shadow basis)
            self.jumped += jump
        return jump

    @property
    def nbytes(self) -> int:
        snaps = sum(v.numel() * v.element_size() for snap in self.snapshots for v in snap[1:])
        weights = sum(p.numel() for p in self.net.parameters())
        return snaps + self.jumped.numel() * self.jumped.element_size() + 3 * 4 * weights

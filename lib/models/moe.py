"""Mixture-of-Experts feed-forward layer (token-choice top-k routing, SwiGLU experts).

One module, one concern: ``MoEFeedForward`` replaces a transformer block's SwiGLU MLP.

Routing (per token ``x``, ``E`` experts, ``k`` active):

- logits ``r = W_router x`` computed in fp32 (autocast off), optional Gaussian noise of std
  ``router_noise`` on the logits while training (noisy top-k gating, Shazeer et al. 2017);
- ``p = softmax(r)`` in fp32; the ``k`` experts with the largest ``p`` (plus a selection-only
  bias when ``aux_free_bias``) are chosen and their ``p`` renormalised to sum to 1 (Mixtral);
- output ``y = sum_j w_j SwiGLU_j(x)`` (+ a dense shared expert when ``shared_expert``).

Auxiliary losses, stored ALREADY WEIGHTED in ``self.aux_loss`` after every forward:

- load balancing (Switch Transformer eq. 4-6, DeepSeek normalisation):
  ``aux_loss_coef * E * sum_i f_i P_i`` with ``f_i`` the share of the ``N k`` routed slots sent to
  expert ``i`` (sums to 1, no gradient) and ``P_i`` the mean router probability of expert ``i``.
  It equals 1 at perfect balance and ``E`` at collapse. transformers'
  ``load_balancing_loss_func`` counts ``f_i`` per token instead of per slot, so its value is
  ``k`` times ours (tested).
- router z-loss (ST-MoE): ``z_loss_coef * mean_tokens(logsumexp(r)^2)``.

Aux-loss-free balancing (DeepSeek-V3, Wang et al. 2024): a per-expert bias ``b`` is added to
``p`` for the top-k *selection only* (the mixing weights stay ``p``); after each training
forward, outside autograd, ``b_i += bias_update_rate * sign(mean_load - load_i)``.

Dispatch is dropless (no capacity factor, no token is ever dropped). Four paths give the same
numbers up to float summation order (tested, forward and gradients):

- ``"grouped"``: sort the ``N k`` (token, expert) slots by expert and run one
  ``torch._grouped_mm`` per projection (CPU kernel from torch 2.9; fp32/bf16/fp16; offsets
  int32).
- ``"padded"``: slots gathered straight from the tokens into an [E, C, d] buffer (C = the
  busiest expert's slot count; a slot's row is its rank among its expert's slots, a cumulative
  count, so no sort) and one ``torch.bmm`` per projection; each token's k outputs come back as
  adjacent rows and are mixed by a weighted sum (no scatter). On CPU, where ``_grouped_mm`` is a
  loop of one matmul per expert, this is often faster for balanced routing and wastes
  ``E C / (N k) - 1`` of the FLOPs on unused rows.
- ``"sorted"``: the slots sorted as for "grouped", then a Python loop of per-expert matmuls.
- ``"dense"``: every expert on every token, combined with a dense [N, E] weight matrix.
  A reference only: E/k times the FLOPs.

``"auto"`` takes grouped (sorted without ``_grouped_mm``) when padding would waste more than
``PAD_SLACK`` (25%) of the routed rows, and otherwise the faster of padded and grouped as
measured once per device and shape on the layer's own tokens (``lib.models.dispatch``: cached
in-process, and on disk with ``$WORKBENCH_DISPATCH_CACHE``). Under ``torch.compile`` or
deterministic mode it times nothing: padded on CPU, grouped on CUDA.

Expert weights are 3-D parameters ``w_gate``/``w_up`` [E, d_ff, d_model] and ``w_down``
[E, d_model, d_ff] (the layout transformers' Mixtral uses, fused there as ``gate_up_proj``),
so the grouped kernel reads them without a per-step stack. Muon treats each expert slice as
its own matrix through ``lib.training.optim.ExpertMuon``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.core import check_bool, check_choice, check_int, check_positive
from lib.models.dispatch import cached_choice, choose, measured_choice_allowed

DISPATCH = ("auto", "grouped", "padded", "sorted", "dense")
# "auto" on CPU pads experts to the busiest one's row count when that wastes at most this share
# of the routed rows (balanced routing); past it, padding would cost more than it saves.
PAD_SLACK = 0.25
# transformers' Mixtral expert kernels (``MixtralConfig.experts_implementation``).
MIXTRAL_EXPERTS_IMPLS = ("eager", "grouped_mm", "batched_mm")


def grouped_mm_available(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> bool:
    """Whether ``torch._grouped_mm`` can run for ``device``/``dtype`` in this torch build."""
    device = torch.device(device)
    return _grouped_mm_available(device.type, device.index, dtype)


@functools.cache  # asked on every "auto" forward; the answer is per device
def _grouped_mm_available(device_type: str, index: int | None, dtype: torch.dtype) -> bool:
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    if not hasattr(torch, "_grouped_mm") or dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if device.type == "cpu":
        return tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 9)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    return False


def _grouped_linear(x: Tensor, weight: Tensor, offsets: Tensor) -> Tensor:
    """Rows of ``x`` [S, in] (sorted by group) times ``weight[g].T`` ([E, out, in]) per group."""
    # torch._grouped_mm is not autocast-aware: apply the autocast dtype by hand (bf16 on CUDA).
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    return _GroupedMM.apply(x.to(dtype), weight.to(dtype).transpose(-2, -1), offsets)


class _GroupedMM(torch.autograd.Function):
    """``torch._grouped_mm`` with a contiguous incoming gradient (its backward needs one)."""

    @staticmethod
    def forward(ctx, x, w, offsets):
        ctx.save_for_backward(x, w, offsets)
        return torch._grouped_mm(x, w, offs=offsets)

    @staticmethod
    def backward(ctx, grad):
        # The CPU kernel rejects gradients with zero strides (e.g. from ``.sum()``): make them dense.
        x, w, offsets = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch._grouped_mm(grad, w.transpose(-2, -1), offs=offsets)
        if ctx.needs_input_grad[1]:
            # [in, S] x [S, out] grouped along S gives one [in, out] block per group.
            grad_w = torch._grouped_mm(x.t(), grad, offs=offsets)
        return grad_x, grad_w, None


class MoEFeedForward(nn.Module):
    """Token-choice top-k Mixture of SwiGLU experts (see module docstring for the maths).

    Args:
        d_model: residual width. d_ff: hidden width of EACH expert (and of the shared expert).
        n_experts: number of routed experts E (>= 1). top_k: experts per token (1..E).
        router_noise: std of Gaussian noise added to the router logits while training (0: off).
        aux_loss_coef: weight of the load-balancing loss (0: off).
        z_loss_coef: weight of the router z-loss (0: off).
        aux_free_bias: DeepSeek-V3 aux-loss-free balancing via a selection-only bias.
        bias_update_rate: step size of that bias per training forward (probability units).
        shared_expert: add a dense SwiGLU expert every token goes through.
        dispatch: "auto" (the faster of padded and grouped, measured once per device and
            shape; grouped when padding wastes over ``PAD_SLACK``), "grouped", "padded",
            "sorted", "dense" (see the module docstring).
        init_std: std of the normal init of all matrices (``lib.models`` re-initialises anyway).

    After each forward: ``aux_loss`` (0-d tensor, already weighted) and ``last_stats``:
    ``load`` [E] share of routed slots per expert (sums to 1), ``max_load_ratio``
    (max/mean load, 1 = balanced), ``load_cv`` (std/mean of load), ``router_entropy`` (mean
    per-token entropy of p, nats; log E = uniform), ``dropped_share`` (always 0: dropless),
    ``overflow_share`` (share of slots a capacity-factor-1 Switch layer would have dropped),
    ``balance_loss`` and ``z_loss`` (unweighted). All detached tensors (no host sync).
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int = 8, top_k: int = 2,
                 router_noise: float = 0.0, aux_loss_coef: float = 0.01, z_loss_coef: float = 0.0,
                 aux_free_bias: bool = False, bias_update_rate: float = 1e-3,
                 shared_expert: bool = False, dispatch: str = "auto", init_std: float = 0.02):
        super().__init__()
        d_model, d_ff = check_int("d_model", d_model, 1), check_int("d_ff", d_ff, 1)
        n_experts = check_int("n_experts", n_experts, 1)
        top_k = check_int("top_k", top_k, 1, n_experts)
        router_noise = check_positive("router_noise", router_noise, allow_zero=True)
        aux_loss_coef = check_positive("aux_loss_coef", aux_loss_coef, allow_zero=True)
        z_loss_coef = check_positive("z_loss_coef", z_loss_coef, allow_zero=True)
        bias_update_rate = check_positive("bias_update_rate", bias_update_rate, allow_zero=True)
        aux_free_bias = check_bool("aux_free_bias", aux_free_bias)
        shared_expert = check_bool("shared_expert", shared_expert)
        check_choice("dispatch", dispatch, DISPATCH)
        init_std = check_positive("init_std", init_std)
        self.d_model, self.d_ff, self.n_experts, self.top_k = d_model, d_ff, n_experts, top_k
        self.router_noise, self.aux_loss_coef, self.z_loss_coef = router_noise, aux_loss_coef, z_loss_coef
        self.aux_free_bias, self.bias_update_rate = aux_free_bias, bias_update_rate
        self.dispatch = dispatch
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        if shared_expert:
            self.shared_w_gate = nn.Parameter(torch.empty(d_ff, d_model))
            self.shared_w_up = nn.Parameter(torch.empty(d_ff, d_model))
            self.shared_w_down = nn.Parameter(torch.empty(d_model, d_ff))
        self.shared_expert = shared_expert
        # Selection-only bias of aux-loss-free balancing: a buffer, never a parameter.
        self.register_buffer("expert_bias", torch.zeros(n_experts), persistent=True)
        self.aux_loss: Tensor = torch.zeros(())
        self._stats_inputs: tuple[Tensor, Tensor, Tensor] | None = None
        self._stats: dict[str, Tensor] | None = None
        self.last_dispatch: str | None = None  # the path the last forward took
        self.reset_parameters(init_std)

    def reset_parameters(self, init_std: float = 0.02) -> None:
        for p in self.parameters():
            nn.init.normal_(p, mean=0.0, std=init_std)
        self.expert_bias.zero_()

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, n_experts={self.n_experts}, "
                f"top_k={self.top_k}, shared_expert={self.shared_expert}, dispatch={self.dispatch!r}")

    def inactive_params_per_token(self) -> int:
        """Expert parameters a token does NOT use (for active-parameter FLOP counts)."""
        return (self.n_experts - self.top_k) * 3 * self.d_model * self.d_ff

    def active_params_per_token(self) -> int:
        """Parameters one token uses: router + k experts (+ shared expert)."""
        per_expert = 3 * self.d_model * self.d_ff
        return (self.n_experts * self.d_model + self.top_k * per_expert
                + (per_expert if self.shared_expert else 0))

    # ------------------------------------------------------------------ routing

    def route(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Router for tokens ``h`` [N, d]: returns fp32 logits [N, E], fp32 probabilities
        [N, E], chosen experts [N, k] (long) and renormalised mixing weights [N, k] (fp32)."""
        with torch.autocast(device_type=h.device.type, enabled=False):
            logits = F.linear(h.float(), self.router.weight.float())
        if self.training and self.router_noise > 0:
            logits = logits + torch.randn_like(logits) * self.router_noise
        probs = torch.softmax(logits, dim=-1)
        scores = probs + self.expert_bias if self.aux_free_bias else probs
        _, experts = torch.topk(scores.detach(), self.top_k, dim=-1)
        weights = probs.gather(-1, experts)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, probs, experts, weights

    # ------------------------------------------------------------------ experts

    def _experts_sorted(self, xs: Tensor, counts: Tensor, grouped: bool) -> Tensor:
        """SwiGLU of each expert on its contiguous block of sorted rows ``xs`` [S, d]."""
        if grouped:
            offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
            act = F.silu(_grouped_linear(xs, self.w_gate, offsets)) * _grouped_linear(xs, self.w_up, offsets)
            return _grouped_linear(act, self.w_down, offsets)
        outs = []
        for e, rows in enumerate(torch.split(xs, counts.tolist())):
            if rows.shape[0]:
                act = F.silu(rows @ self.w_gate[e].t()) * (rows @ self.w_up[e].t())
                outs.append(act @ self.w_down[e].t())
        return torch.cat(outs) if outs else xs.new_zeros(0, self.d_model)

    def _padded(self, h: Tensor, flat: Tensor, weights: Tensor, rows_per_expert: int) -> Tensor:
        """Output [N, d] of the padded-bmm path for tokens ``h`` [N, d], slot experts ``flat``
        [N k] (token-major) and mixing weights [N, k].

        Slot s of expert e goes to row e C + (its rank among e's slots, in slot order) of an
        [E, C, d] buffer gathered straight from ``h`` (no sort: the rank is a cumulative count).
        Unused rows read token 0 and are never read back, so their (finite) outputs carry no
        value and no gradient. The k outputs of each token come back in slot order, adjacent, and
        are mixed by a weighted sum over k (no scatter)."""
        e, c, d = self.n_experts, rows_per_expert, self.d_model
        n, k = weights.shape
        rank = F.one_hot(flat, e).cumsum(0).gather(1, flat.unsqueeze(1)).squeeze(1) - 1
        dest = flat * c + rank                                            # slot -> buffer row
        token = torch.arange(n * k, device=h.device).div(k, rounding_mode="floor")
        src = torch.zeros(e * c, dtype=torch.long, device=h.device).index_copy_(0, dest, token)
        buf = h.index_select(0, src).view(e, c, d)
        act = F.silu(torch.bmm(buf, self.w_gate.transpose(1, 2))) * torch.bmm(buf, self.w_up.transpose(1, 2))
        ys = torch.bmm(act, self.w_down.transpose(1, 2)).view(e * c, d).index_select(0, dest)
        return (ys.view(n, k, d) * weights.to(ys.dtype).unsqueeze(-1)).sum(dim=1)

    def _experts_dense(self, h: Tensor, experts: Tensor, weights: Tensor) -> Tensor:
        """Reference: all experts on all tokens, mixed by a dense [N, E] weight matrix."""
        mix = torch.zeros(h.shape[0], self.n_experts, dtype=weights.dtype, device=h.device)
        mix = mix.scatter(1, experts, weights)
        act = F.silu(torch.einsum("nd,efd->enf", h, self.w_gate)) * torch.einsum("nd,efd->enf", h, self.w_up)
        out = torch.einsum("enf,edf->end", act, self.w_down)
        return torch.einsum("end,ne->nd", out, mix.to(out.dtype))

    def _resolve_dispatch(self, h: Tensor, flat: Tensor, weights: Tensor, counts: Tensor) -> tuple[str, int]:
        """The dispatch path for this forward and, for "padded", the rows per expert.

        "auto": grouped (sorted where ``_grouped_mm`` is missing) when padding would waste more
        than ``PAD_SLACK`` of the routed rows; otherwise the faster of padded and grouped, as
        measured once per device and shape (``lib.models.dispatch.fastest``, on this forward's
        tokens and routing, forward and backward for a training forward). Where nothing may be
        timed (``lib.models.dispatch.choose``: deterministic mode, compile, a dispatch mode
        without a cached choice) CPU takes padded, CUDA grouped (the static rule)."""
        mode = self.dispatch
        unpadded = "grouped" if grouped_mm_available(h.device, self.w_gate.dtype) else "sorted"
        if mode == "grouped" and unpadded != "grouped":
            raise ValueError(f"dispatch='grouped' needs torch._grouped_mm for {h.device.type}/"
                             f"{self.w_gate.dtype}; use 'auto' or 'sorted'")
        if mode != "auto":
            return mode, int(counts.max()) if mode == "padded" else 0
        grad = torch.is_grad_enabled() and (h.requires_grad or self.w_gate.requires_grad)
        key = ("moe", h.device, self.w_gate.dtype, h.shape[0], self.d_model, self.d_ff,
               self.n_experts, self.top_k, "train" if grad else "eval")
        static = "padded" if h.device.type == "cpu" else unpadded
        if h.device.type != "cpu":  # skip the host sync for the busiest count where grouped is known
            cached = cached_choice(key)
            if cached == unpadded or (cached is None and not measured_choice_allowed()):
                return unpadded, 0
        rows = int(counts.max())  # on CPU reading it costs no sync
        if self.n_experts * rows > (1 + PAD_SLACK) * h.shape[0] * self.top_k:
            return unpadded, 0
        choice = choose(key, lambda: self._timed_paths(h, flat, weights, counts, ("padded", unpadded), grad),
                        static, h.device)
        return choice, rows if choice == "padded" else 0

    def _timed_paths(self, h, flat, weights, counts, modes, grad):
        """Zero-argument callables running each dispatch path on detached copies of this
        forward's tokens and routing (forward, and backward by ``autograd.grad`` when ``grad``,
        so no parameter's ``.grad`` is touched)."""
        h0, w0 = h.detach().requires_grad_(grad), weights.detach()
        params = [p for p in (self.w_gate, self.w_up, self.w_down) if p.requires_grad] if grad else []
        grad_out = torch.randn(h.shape, device=h.device, dtype=h.dtype) if grad else None

        def run(mode):
            def fn():
                rows = int(counts.max()) if mode == "padded" else 0
                out = self._experts_out(mode, h0, flat, w0, counts, rows)
                if grad:
                    torch.autograd.grad(out, [h0, *params], grad_out)
            return fn

        return {mode: run(mode) for mode in modes}

    def _experts_out(self, mode: str, h: Tensor, flat: Tensor, weights: Tensor, counts: Tensor,
                     rows_per_expert: int) -> Tensor:
        """The routed experts' mixed output [N, d] by dispatch path ``mode`` (not "auto")."""
        if mode == "dense":
            return self._experts_dense(h, flat.view(weights.shape), weights)
        if mode == "padded":
            return self._padded(h, flat, weights, rows_per_expert)
        # Slots sorted by expert; slot s belongs to token s // k. Gather rows with
        # index_select and scatter the weighted expert outputs back with index_add (their
        # backward passes are each other: no [N k, d] permutation in either direction).
        order = torch.argsort(flat, stable=True)
        token = order.div(self.top_k, rounding_mode="floor")
        xs = h.index_select(0, token)
        ys = self._experts_sorted(xs, counts, grouped=mode == "grouped")
        ys = ys * weights.reshape(-1)[order].unsqueeze(-1).to(ys.dtype)
        return ys.new_zeros(h.shape[0], self.d_model).index_add_(0, token, ys)

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must end in d_model={self.d_model}, got shape {tuple(x.shape)}")
        shape = x.shape
        h = x.reshape(-1, self.d_model)
        logits, probs, experts, weights = self.route(h)
        flat = experts.reshape(-1)                                        # [N k] slot -> expert
        counts = torch.bincount(flat, minlength=self.n_experts)
        mode, rows_per_expert = self._resolve_dispatch(h, flat, weights, counts)
        self.last_dispatch = mode
        out = self._experts_out(mode, h, flat, weights, counts, rows_per_expert)
        if self.shared_expert:
            act = F.silu(h @ self.shared_w_gate.t()) * (h @ self.shared_w_up.t())
            out = out + act @ self.shared_w_down.t()
        self._losses(logits, probs, counts)
        return out.to(x.dtype).reshape(shape)

    def _losses(self, logits: Tensor, probs: Tensor, counts: Tensor) -> None:
        """Weighted auxiliary losses (only those with a non-zero coefficient are computed), the
        aux-free bias update, and the inputs of ``last_stats`` (computed when first read)."""
        e = self.n_experts
        aux = None
        if self.aux_loss_coef:
            load = counts.float() / counts.sum().clamp(min=1)             # f_i, sums to 1
            aux = self.aux_loss_coef * e * torch.sum(load * probs.mean(dim=0))
        if self.z_loss_coef:
            z = self.z_loss_coef * torch.logsumexp(logits, dim=-1).square().mean()
            aux = z if aux is None else aux + z
        self.aux_loss = aux if aux is not None else torch.zeros((), device=logits.device)
        if self.aux_free_bias and self.training:
            with torch.no_grad():
                # DeepSeek-V3: raise the bias of under-loaded experts, lower over-loaded ones.
                load = counts.float() / counts.sum().clamp(min=1)
                self.expert_bias += self.bias_update_rate * torch.sign(1.0 / e - load)
        self._stats_inputs = (logits.detach(), probs.detach(), counts)
        self._stats = None

    @property
    def last_stats(self) -> dict[str, Tensor]:
        """Routing statistics of the last forward (see the class docstring); computed on first
        access, so a training step that never reads them does not pay for them."""
        if self._stats is None and self._stats_inputs is not None:
            logits, probs, counts = self._stats_inputs
            e = self.n_experts
            with torch.no_grad():
                load = counts.float() / counts.sum().clamp(min=1)
                capacity = counts.sum() / e                               # capacity factor 1
                self._stats = {
                    "load": load, "max_load_ratio": load.max() * e,
                    "load_cv": load.std(unbiased=False) * e,
                    "router_entropy": torch.special.entr(probs).sum(-1).mean(),
                    "dropped_share": torch.zeros((), device=load.device),
                    "overflow_share": (counts - capacity).clamp(min=0).sum() / counts.sum().clamp(min=1),
                    "balance_loss": e * torch.sum(load * probs.mean(dim=0)),
                    "z_loss": torch.logsumexp(logits, dim=-1).square().mean(),
                }
        return self._stats or {}


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    """Every ``MoEFeedForward`` inside ``model`` (in module order)."""
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def routing_summary(model: nn.Module) -> dict[str, float]:
    """Routing statistics of the last forward, averaged over the model's MoE layers, as floats.

    Keys: ``max_load_ratio``, ``load_cv``, ``router_entropy``, ``overflow_share``,
    ``dropped_share``, ``balance_loss``, ``z_loss``. Empty dict for a model without MoE layers
    or before the first forward.
    """
    layers = [m for m in moe_layers(model) if m.last_stats]
    if not layers:
        return {}
    keys = [k for k in layers[0].last_stats if k != "load"]
    return {k: float(torch.stack([m.last_stats[k].float() for m in layers]).mean()) for k in keys}


# --------------------------------------------------------------------------- transformers


def to_hf_mixtral_block(moe: MoEFeedForward, experts_implementation: str = "eager"):
    """transformers' ``MixtralSparseMoeBlock`` of the same shape holding ``moe``'s weights.

    ``experts_implementation``: "eager" (a loop over hit experts), "grouped_mm" or
    "batched_mm". Mixtral has no shared expert, z-loss or aux-free bias: ``moe`` must not use
    them (router noise is ignored: compare in eval mode). No downloads.
    """
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    if not isinstance(moe, MoEFeedForward):
        raise ValueError(f"moe must be a MoEFeedForward, got {type(moe).__name__}")
    if moe.shared_expert or moe.aux_free_bias:
        raise ValueError("moe must have shared_expert=False and aux_free_bias=False (Mixtral has neither)")
    check_choice("experts_implementation", experts_implementation, MIXTRAL_EXPERTS_IMPLS)
    config = MixtralConfig(hidden_size=moe.d_model, intermediate_size=moe.d_ff,
                           num_local_experts=moe.n_experts, num_experts_per_tok=moe.top_k,
                           router_jitter_noise=0.0, hidden_act="silu",
                           experts_implementation=experts_implementation)
    block = MixtralSparseMoeBlock(config).to(device=moe.w_gate.device, dtype=moe.w_gate.dtype)
    with torch.no_grad():
        block.gate.weight.copy_(moe.router.weight)
        block.experts.gate_up_proj.copy_(torch.cat([moe.w_gate, moe.w_up], dim=1))
        block.experts.down_proj.copy_(moe.w_down)
    return block

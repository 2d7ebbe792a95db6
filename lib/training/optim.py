"""Optimizers for the workbench: Muon on hidden matrices + AdamW on the rest, in one call.

``build_optimizers(model, kind="muon", lr=0.02, ...)`` returns ``(optimizers, schedulers)``
ready for ``lib.training.train(model, data, cfg, optimizers=..., schedulers=...)``.
``adamw(groups, **kwargs)`` is torch's AdamW, fused where torch supports it (the default
optimizer of ``lib.training.train`` and the AdamW half of ``build_optimizers``).

Parameter roles (``param_roles``), every trainable parameter exactly once:

- ``"muon"``: hidden matrices (attention projections, dense MLP matrices, MoE expert stacks,
  shared experts): 2-D, or 3-D expert stacks [E, out, in].
- ``"adamw_decay"``: embeddings, the output head, MoE router weights (2-D, weight-decayed).
  Muon's orthogonalised update suits hidden linear maps, not lookup tables or the head
  (Jordan et al. 2024; Moonlight), and the router is kept on AdamW so its small [E, d]
  matrix is not forced to unit singular values.
- ``"adamw_no_decay"``: norm gains, biases, any other < 2-D parameter.

Expert stacks. ``torch.optim.Muon`` accepts 2-D parameters only, and an optimizer needs leaf
tensors, so it cannot be handed per-expert views. Options were (a) store experts as a
``ParameterList`` of 2-D matrices and ``torch.stack`` them at every forward (a copy of all
expert weights per layer per step, forward and backward), or (b) keep the 3-D stacks, which
``torch._grouped_mm`` and transformers' Mixtral read directly, and teach Muon to treat each
expert slice ``W[e]`` as its own matrix. We take (b): ``ExpertMuon`` subclasses
``torch.optim.Muon`` (same hyper-parameters, validation and state) and runs the update with a
batched Newton-Schulz over the expert axis. Each expert gets the update plain Muon would give
a separate 2-D matrix (momentum, Nesterov, Newton-Schulz, ``adjust_lr_fn`` from the 2-D shape,
decoupled weight decay); tests check it against torch's Muon on E separate matrices and
against an independent Newton-Schulz written from the published coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lib.core import check_bool, check_choice, check_int, check_number, check_positive
from lib.models import MoEFeedForward
from lib.schedules import attach

KINDS = ("muon", "adamw")
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
ROLES = ("muon", "adamw_decay", "adamw_no_decay")
_HEAD_NAMES = ("head", "lm_head", "output")
# Newton-Schulz dtypes of ExpertMuon; "auto" is bf16 on CUDA, fp32 elsewhere.
NS_DTYPES = ("auto", torch.bfloat16, torch.float16, torch.float32, torch.float64)


def adamw(groups, **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW(groups, **kwargs)``, with torch's fused implementation (one kernel
    over all tensors instead of ~10 ops per tensor) when every parameter is floating point on
    a CPU or CUDA device, which torch supports there; the per-tensor loop otherwise. On a
    2-core CPU this makes a small model's training step 10-18% faster."""
    groups = list(groups)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if "fused" not in kwargs and "foreach" not in kwargs:
        kwargs["fused"] = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                               for p in params)
    return torch.optim.AdamW(groups, **kwargs)


def check_betas(betas: Sequence[float], name: str = "betas") -> tuple[float, float]:
    """Adam's two moment decays, each a number in [0, 1), as a tuple of floats."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{name} must be two numbers in [0, 1), got {betas!r}")
    return tuple(check_number(f"{name}[{i}]", b, 0.0, 1.0, strict_max=True) for i, b in enumerate(betas))


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                  steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximate orthogonalisation ``U V^T`` of ``g`` [m, n] or a stack [E, m, n] (each slice
    separately) by the quintic Newton-Schulz iteration ``X <- aX + (bXX^T + c(XX^T)^2) X`` after
    scaling each matrix to unit Frobenius norm. Same operations as torch's Muon
    (``torch.optim._muon._zeropower_via_newtonschulz``), batched, in ``dtype``."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    addmm = torch.addmm if x.ndim == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        x = addmm(x, addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class ExpertMuon(torch.optim.Muon):
    """``torch.optim.Muon`` that also takes 3-D parameters [E, out, in], updating each
    ``[out, in]`` slice as an independent matrix (see module docstring).

    Same arguments, defaults and state as ``torch.optim.Muon``, plus ``ns_dtype``: the dtype of
    the Newton-Schulz iteration. torch always uses bf16, which CPUs without bf16 matrix units
    run about 15x slower than fp32 (measured on this project's 2-core CPU); ``"auto"`` keeps
    bf16 on CUDA and uses fp32 elsewhere. With ``ns_dtype=torch.bfloat16`` a 2-D parameter
    gets bit-for-bit torch's update (tested); expert stacks are orthogonalised in one batched
    iteration.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None,
                 ns_dtype: torch.dtype | str = "auto"):
        check_choice("ns_dtype", ns_dtype, NS_DTYPES)
        lr = check_positive("lr", lr, allow_zero=True)
        weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
        momentum = check_number("momentum", momentum, 0.0, 1.0, strict_max=True)
        nesterov = check_bool("nesterov", nesterov)
        ns_steps = check_int("ns_steps", ns_steps, 1)
        eps = check_positive("eps", eps)
        # torch's Muon validates the hyper-parameters and builds ``defaults``; a 1x1 probe
        # borrows both without duplicating them, then the real groups (2-D or 3-D) go in.
        probe = torch.optim.Muon([torch.zeros(1, 1, requires_grad=True)], lr=lr, weight_decay=weight_decay,
                                 momentum=momentum, nesterov=nesterov, ns_coefficients=ns_coefficients,
                                 eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        torch.optim.Optimizer.__init__(self, params, {**probe.defaults, "ns_dtype": ns_dtype})
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim not in (2, 3):
                    raise ValueError(f"ExpertMuon takes 2-D matrices or 3-D expert stacks, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        """One Muon step: momentum, Nesterov blend, Newton-Schulz, shape-adjusted LR, decay."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)  # torch's: creates momentum buffers
            lr, m = group["lr"], group["momentum"]
            for p, g, buf in zip(params, grads, bufs):
                buf.lerp_(g, 1 - m)
                update = g.lerp(buf, m) if group["nesterov"] else buf
                dtype = group["ns_dtype"]
                if dtype == "auto":
                    dtype = torch.bfloat16 if p.device.type == "cuda" else torch.float32
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                out_dim, in_dim = p.shape[-2:]
                adjust = group["adjust_lr_fn"]
                ratio = (0.2 * math.sqrt(max(out_dim, in_dim)) if adjust == "match_rms_adamw"
                         else math.sqrt(max(1, out_dim / in_dim)))
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * ratio)
        return loss


def _head_and_embedding_params(model: nn.Module) -> set[int]:
    """ids of parameters in embedding tables and the output head."""
    ids = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            ids.update(id(p) for p in module.parameters())
    heads = [getattr(model, n) for n in _HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)]
    if callable(getattr(model, "get_output_embeddings", None)):
        heads.append(model.get_output_embeddings())
    for head in heads:
        if head is not None:
            ids.update(id(p) for p in head.parameters())
    return ids


def _router_params(model: nn.Module) -> set[int]:
    return {id(m.router.weight) for m in model.modules() if isinstance(m, MoEFeedForward)}


def param_roles(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Split ``model``'s trainable parameters into the roles of the module docstring.

    Returns ``{"muon": [(name, p), ...], "adamw_decay": [...], "adamw_no_decay": [...]}``;
    tied parameters appear once (under their first name).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    special = _head_and_embedding_params(model) | _router_params(model)
    roles: dict[str, list[tuple[str, nn.Parameter]]] = {r: [] for r in ROLES}
    for name, p in model.named_parameters():  # named_parameters() already de-duplicates ties
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            roles["adamw_no_decay"].append((name, p))
        elif id(p) in special or p.ndim > 3:
            roles["adamw_decay"].append((name, p))
        else:
            roles["muon"].append((name, p))
    return roles


def build_optimizers(model: nn.Module, kind: str = "muon", lr: float = 0.02, adamw_lr: float | None = None,
                     weight_decay: float = 0.1, muon_weight_decay: float | None = None,
                     momentum: float = 0.95, adjust_lr_fn: str | None = None,
                     betas: tuple[float, float] = (0.9, 0.95), schedule=None, ns_dtype="auto"):
    """Build the optimizers for ``model`` and attach ``schedule`` to each.

    Args:
        kind: ``"muon"`` (Muon on hidden matrices + AdamW on the rest) or ``"adamw"`` (one
            AdamW on everything; matrices decayed, < 2-D parameters not).
        lr: peak LR of Muon (``kind="muon"``) or of the single AdamW (``kind="adamw"``).
        adamw_lr: peak LR of the AdamW half when ``kind="muon"``; default ``lr`` with
            ``adjust_lr_fn="match_rms_adamw"`` (Moonlight: the scaling makes LRs transfer),
            else ``lr / 10`` (the seed study's 0.065 / 0.0065 ratio). Must be None for "adamw".
        weight_decay: decoupled weight decay of AdamW's matrix group (norms/biases get 0).
        muon_weight_decay: Muon's decoupled weight decay (default ``weight_decay``).
        momentum: Muon momentum (Nesterov). betas: AdamW betas.
        adjust_lr_fn: Muon's per-shape LR scaling: None/"original" ``sqrt(max(1, out/in))``,
            "match_rms_adamw" ``0.2 sqrt(max(out, in))``.
        schedule: a ``lib.schedules`` schedule (counted in optimizer steps) or None.
        ns_dtype: Newton-Schulz dtype of ``ExpertMuon`` ("auto": bf16 on CUDA, fp32 on CPU).

    Returns ``(optimizers, schedulers)``: lists; ``schedulers`` is empty without a schedule.
    """
    check_choice("kind", kind, KINDS)
    check_choice("adjust_lr_fn", adjust_lr_fn, ADJUST_LR_FNS)
    lr = check_positive("lr", lr)
    weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
    betas = check_betas(betas)
    roles = param_roles(model)

    def adamw_of(groups, peak):
        groups = [g for g in groups if g["params"]]
        return adamw(groups, lr=peak, betas=betas) if groups else None

    no_decay = {"params": [p for _, p in roles["adamw_no_decay"]], "weight_decay": 0.0}
    if kind == "adamw":
        if adamw_lr is not None:
            raise ValueError("adamw_lr is for kind='muon' (the AdamW half); with kind='adamw' use lr")
        decay = {"params": [p for r in ("muon", "adamw_decay") for _, p in roles[r]], "weight_decay": weight_decay}
        optimizers = [adamw_of([decay, no_decay], lr)]
    else:
        if adamw_lr is None:
            adamw_lr = lr if adjust_lr_fn == "match_rms_adamw" else lr / 10
        adamw_lr = check_positive("adamw_lr", adamw_lr)
        muon_wd = weight_decay if muon_weight_decay is None else check_positive(
            "muon_weight_decay", muon_weight_decay, allow_zero=True)
        momentum = check_number("momentum", momentum, 0.0, 1.0, strict_max=True)
        decay = {"params": [p for _, p in roles["adamw_decay"]], "weight_decay": weight_decay}
        muon_params = [p for _, p in roles["muon"]]
        optimizers = [ExpertMuon(muon_params, lr=lr, weight_decay=muon_wd, momentum=momentum,
                                 adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype)] if muon_params else []
        optimizers.append(adamw_of([decay, no_decay], adamw_lr))
    optimizers = [o for o in optimizers if o is not None]
    if not optimizers:
        raise ValueError("model has no trainable parameters")
    schedulers = []
    if schedule is not None:
        schedulers = [attach(opt, schedule) for opt in optimizers]
    return optimizers, schedulers


def describe_roles(model: nn.Module) -> dict[str, dict[str, int]]:
    """Tensor and element counts per role, for a notebook table."""
    return {role: {"tensors": len(items), "params": sum(p.numel() for _, p in items)}
            for role, items in param_roles(model).items()}

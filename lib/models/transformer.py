"""A small decoder-only transformer with pluggable positional encodings and MLPs.

nanoGPT-sized and readable: pre-norm blocks (RMSNorm), causal self-attention through
``torch.nn.functional.scaled_dot_product_attention`` (flash-attn on CUDA when installed and
asked for), SwiGLU MLPs (or a Mixture-of-Experts layer from ``lib.models.moe``), optional tied
embeddings. The positional encoding is a ``lib.encodings.PositionalEncoding`` chosen by name,
so RoPE, ALiBi, additive and state-carrying encodings share one attention implementation. A bias
that is a function of positions (ALiBi's ``score_bias``) is added inside the kernel
(``lib.encodings.bias_attention``: ALiBi folded into causal SDPA as one more head dimension in
float32, FlexAttention, or flash-attn's ``alibi_slopes``), and materialised as [H, T, T] only
where none applies (eager attention, or no kernel for the dtype and length).

The same shapes build as transformers' ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``
(``to_hf``) and weights copy across exactly (``copy_to_hf``), so results can be checked
against the ecosystem's implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.core import (
    Registry,
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_positive,
)
from lib.encodings import (
    PositionalEncoding,
    bias_attention,
    build_encoding,
    choose_bias_path,
    has_score_bias,
    interleave_pairs,
    load_flash_attn,
)
from lib.models.dispatch import choose
from lib.models.losses import linear_cross_entropy
from lib.models.moe import MoEFeedForward

ATTN_IMPLS = ("sdpa", "flash", "eager")
LOSS_IMPLS = ("auto", "chunked", "full")
# "auto" trains with the chunked output loss from this many logits per step (16 MiB in fp32).
CHUNKED_LOSS_MIN_LOGITS = 1 << 22


def _round_up(x: float, multiple: int) -> int:
    return int(multiple * math.ceil(x / multiple))


@dataclass
class ModelConfig:
    """Shape and options of a ``Transformer``. All sizes are counts (not bytes).

    ``d_ff`` is the SwiGLU hidden width; by default 8/3 * d_model rounded up to a multiple
    of 64 (Llama's convention, which keeps the MLP at ~8 d_model^2 parameters).

    ``max_seq_len`` is the training context: ``lib.training.train`` refuses a longer
    ``seq_len``, while a forward accepts longer inputs (length-extrapolation evaluations).
    Token ids must lie in ``[0, vocab_size)``; ``train`` checks its first batches (a per-forward
    check would synchronise the GPU every step).

    ``loss_impl`` is how a forward with targets computes the language-model loss: "full"
    materialises the [tokens, vocab] logits and calls ``F.cross_entropy``; "chunked" uses
    ``lib.models.losses.linear_cross_entropy`` (same value and gradients, no logits tensor: the
    output has ``logits=None``); "auto" (default) uses "chunked" for training forwards
    (gradients enabled, compiled or not) with at least ``CHUNKED_LOSS_MIN_LOGITS``
    logits and "full" otherwise.
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 256
    encoding: str = "rope"
    encoding_kwargs: dict[str, Any] = field(default_factory=dict)
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    dropout: float = 0.0
    mlp: str = "swiglu"
    moe: dict[str, Any] = field(default_factory=dict)
    init_std: float = 0.02
    attn_impl: str = "sdpa"
    loss_impl: str = "auto"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            setattr(self, name, check_int(name, getattr(self, name), 1))
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        self.n_kv_heads = self.n_heads if self.n_kv_heads is None else check_int("n_kv_heads", self.n_kv_heads, 1)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        self.d_ff = _round_up(8 * self.d_model / 3, 64) if self.d_ff is None else check_int("d_ff", self.d_ff, 1)
        if not isinstance(self.encoding_kwargs, dict) or not isinstance(self.moe, dict):
            raise ValueError(f"encoding_kwargs and moe must be dicts, got {self.encoding_kwargs!r} and {self.moe!r}")
        self.tie_embeddings = check_bool("tie_embeddings", self.tie_embeddings)
        self.norm_eps = check_positive("norm_eps", self.norm_eps)
        self.init_std = check_positive("init_std", self.init_std)
        self.dropout = check_fraction("dropout", self.dropout, strict_max=True)
        check_choice("attn_impl", self.attn_impl, ATTN_IMPLS)
        check_choice("loss_impl", self.loss_impl, LOSS_IMPLS)
        check_choice("mlp", self.mlp, sorted(MLPS))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelOutput:
    """``loss`` = ``lm_loss`` + ``aux_loss`` (auxiliary losses, e.g. MoE load balancing)."""

    logits: Tensor | None  # None when the loss was computed chunked (ModelConfig.loss_impl)
    loss: Tensor | None = None
    lm_loss: Tensor | None = None
    aux_loss: Tensor | None = None


# A fused projection (QKV, gate-up) is one GEMM forward, but its output gradient is assembled by
# a concatenation in backward and its pieces are strided views. Where that copy costs more than
# the launches it saves, the pieces are computed by one GEMM each on the weight's row blocks (the
# parameter stays fused). Which one is faster depends on the shape and the machine, so "auto"
# times both once per device and shape (lib.models.dispatch.fastest, forward and backward for a
# training forward). Where nothing may be timed (torch.compile, deterministic mode) the static
# rule measured on the 2-core CPU applies: split on CPU from SPLIT_PROJECTION_MIN_TOKENS tokens
# (1.04x at 1024 tokens, 1.08x at 2048, d=64; neutral at 512), fused otherwise.
SPLIT_PROJECTION_MIN_TOKENS = 1024
PROJECTION_IMPLS = ("auto", "fused", "split")


def split_projection(x: Tensor, linear: nn.Linear, sizes: tuple[int, ...], impl: str = "auto") -> tuple[Tensor, ...]:
    """``linear(x).split(sizes, dim=-1)`` (a bias-free ``linear``), by one fused GEMM
    (``impl="fused"``), one GEMM per piece (``"split"``, the same values), or the faster of the
    two for this device and shape (``"auto"``; see the note above)."""
    if impl == "auto":
        impl = projection_impl(x, linear, sizes)
    elif impl not in PROJECTION_IMPLS:
        check_choice("impl", impl, PROJECTION_IMPLS)
    if impl == "split":
        return tuple(F.linear(x, w) for w in linear.weight.split(sizes, dim=0))
    return linear(x).split(sizes, dim=-1)


def projection_impl(x: Tensor, linear: nn.Linear, sizes: tuple[int, ...]) -> str:
    """The implementation ("fused" or "split") ``split_projection(x, linear, sizes, "auto")``
    runs for this input: the measured choice for its device and shape, timed on first use where
    timing is allowed (``lib.models.dispatch.choose``), else the static rule."""
    tokens = x.shape[:-1].numel()
    static = "split" if x.device.type == "cpu" and tokens >= SPLIT_PROJECTION_MIN_TOKENS else "fused"
    grad = torch.is_grad_enabled() and (x.requires_grad or linear.weight.requires_grad)
    # device and dtype as objects: hashed as fast as text, and written as the same text on disk
    key = ("proj", x.device, x.dtype, tokens, x.shape[-1], tuple(sizes), "train" if grad else "eval")

    def candidates():
        x0 = x.detach().reshape(tokens, x.shape[-1]).requires_grad_(grad)
        grads = [torch.randn(tokens, n, device=x.device, dtype=x.dtype) for n in sizes] if grad else None

        def run(impl):
            def fn():
                pieces = split_projection(x0, linear, sizes, impl)
                if grad:  # autograd.grad: no parameter's .grad is touched
                    torch.autograd.grad(pieces, [x0, linear.weight] if linear.weight.requires_grad else [x0], grads)
            return fn

        return {"fused": run("fused"), "split": run("split")}

    return choose(key, candidates, static, x.device)


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` (same parameters, state dict and formula) whose mean square is one
    fused ``torch.linalg.vecdot`` reduction: autograd then keeps a few full-size passes fewer
    than torch's composite CPU ``rms_norm``, measured 25-35% off forward + backward at 2,048 x 64
    and larger, 4% at 512 x 64. Half-precision inputs are normalised in float32 (as transformers'
    ``LlamaRMSNorm``) and cast back."""

    def __init__(self, normalized_shape: int, eps: float | None = None, **kwargs):
        super().__init__(normalized_shape, eps=eps, **kwargs)
        if len(self.normalized_shape) != 1:
            raise ValueError(f"normalized_shape must be one dimension, got {normalized_shape!r}")

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != self.normalized_shape:
            raise ValueError(f"expected last dim {tuple(self.normalized_shape)}, got input shape {tuple(x.shape)}")
        wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
        eps = self.eps if self.eps is not None else torch.finfo(wide.dtype).eps
        mean_square = torch.linalg.vecdot(wide, wide).unsqueeze(-1) * (1.0 / x.shape[-1])
        y = wide * torch.rsqrt(mean_square + eps)
        if wide.dtype != x.dtype:
            y = y.to(x.dtype)
        return y * self.weight if self.weight is not None else y


class SwiGLU(nn.Module):
    """SwiGLU MLP (Shazeer 2020): down(silu(gate(x)) * up(x)), gate and up fused in one matmul."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.d_ff = d_ff
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = split_projection(x, self.gate_up, (self.d_ff, self.d_ff))
        return self.down(F.silu(gate) * up)


# How a block builds its MLP from the config, by ``ModelConfig.mlp``.
MLPS: Registry[Callable[[ModelConfig], nn.Module]] = Registry("mlp")


@MLPS.register("swiglu")
def _build_swiglu(config: ModelConfig) -> nn.Module:
    return SwiGLU(config.d_model, config.d_ff)


@MLPS.register("moe")
def _build_moe(config: ModelConfig) -> nn.Module:
    return MoEFeedForward(d_model=config.d_model, d_ff=config.d_ff, **config.moe)


class Attention(nn.Module):
    """Causal multi-head (grouped-query) self-attention with rotary/bias encoding hooks."""

    def __init__(self, config: ModelConfig, encoding: PositionalEncoding):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(config.d_model, self.q_size + 2 * self.kv_size, bias=False)
        self.out = nn.Linear(self.q_size, config.d_model, bias=False)
        self.dropout = config.dropout
        self.attn_impl = config.attn_impl
        # Shared with the model, which registers it once; a plain attribute here keeps it out
        # of this module's state_dict (no duplicate keys per layer).
        object.__setattr__(self, "encoding", encoding)
        self.capture = False  # when True, eager attention keeps its probabilities here:
        self.last_probs: Tensor | None = None

    def forward(self, x: Tensor, positions: Tensor | None = None, bias: Tensor | None = None,
                seq_len: int | None = None) -> Tensor:
        """``x`` [B, T, d_model], or the tokens flattened [B * T, d_model] with ``seq_len`` = T
        (the model's residual stream: linear layers on 2-D inputs skip two reshapes and their
        autograd nodes each); the output has ``x``'s shape."""
        b, t = _batch_time(x, seq_len)
        qk, v = split_projection(x, self.qkv, (self.q_size + self.kv_size, self.kv_size))
        # Queries and keys stay packed as heads of one tensor for the rotation (one pass for both).
        qk = qk.view(b, t, self.n_heads + self.n_kv_heads, self.head_dim)
        q, k = self.encoding.rotate_packed(qk, self.n_heads, positions)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        if self.capture or self.attn_impl == "eager":
            y = self._eager(q, k, v, bias, p)
        elif bias is None and has_score_bias(self.encoding):
            # The model left the bias to the kernel (lib.encodings.flex: folded, flex or flash-attn).
            y = bias_attention(q, k, v, self.encoding, dropout_p=p, flash=self.attn_impl == "flash")
        elif self.attn_impl == "flash" and bias is None and q.is_cuda and (fa := load_flash_attn()):
            # flash-attn wants [B, T, H, D] in half precision.
            dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
            y = fa(*(z.transpose(1, 2).to(dtype) for z in (q, k, v)), dropout_p=p, causal=True)
            y = y.to(x.dtype).transpose(1, 2)
        elif bias is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True,
                                               enable_gqa=self.n_kv_heads != self.n_heads)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p,
                                               enable_gqa=self.n_kv_heads != self.n_heads)
        return self.out(y.transpose(1, 2).reshape(*x.shape[:-1], self.q_size))

    def qk_rows(self, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """The query and key rows of the fused projection with a per-head feature permutation
        (``interleave_pairs`` / ``deinterleave_pairs``) applied: [(Hq + Hk) * D, d_model]. Queries
        and keys are kept with interleaved rotary pairs; transformers keeps them half-split."""
        qk = self.qkv.weight[: self.q_size + self.kv_size]
        heads = qk.view(self.n_heads + self.n_kv_heads, self.head_dim, -1).transpose(1, 2)
        return fn(heads).transpose(1, 2).reshape(qk.shape)

    def _eager(self, q, k, v, bias, p):
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        scores = scores + (bias if bias is not None else _causal_mask(q.shape[-2], q.device, q.dtype))
        probs = scores.softmax(dim=-1)
        if self.capture:
            self.last_probs = probs.detach()
        return F.dropout(probs, p=p, training=self.training) @ v


def _batch_time(x: Tensor, seq_len: int | None) -> tuple[int, int]:
    """(B, T) of ``x`` [B, T, d], or of tokens flattened [B * T, d] with ``seq_len`` = T."""
    if x.dim() == 3:
        return x.shape[0], x.shape[1]
    if x.dim() != 2 or seq_len is None or seq_len <= 0 or x.shape[0] % seq_len:
        raise ValueError(f"x must be [batch, time, d_model], or [batch * time, d_model] with seq_len = time; "
                         f"got shape {tuple(x.shape)} and seq_len={seq_len!r}")
    return x.shape[0] // seq_len, seq_len


def _causal_mask(t: int, device, dtype) -> Tensor:
    return torch.full((t, t), float("-inf"), device=device, dtype=dtype).triu(1)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, encoding: PositionalEncoding):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config, encoding)
        self.mlp_norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLPS.build(config.mlp, config)

    def forward(self, x: Tensor, positions: Tensor | None = None, bias: Tensor | None = None,
                seq_len: int | None = None) -> Tensor:
        """``x`` [B, T, d_model], or [B * T, d_model] with ``seq_len`` = T (see ``Attention``)."""
        x = x + self.attn(self.attn_norm(x), positions, bias, seq_len)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Decoder-only language model. ``forward(idx, targets=None) -> ModelOutput``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoding = build_encoding(config.encoding, d_model=config.d_model,
                                       n_heads=config.n_heads, head_dim=config.head_dim,
                                       max_seq_len=config.max_seq_len, **config.encoding_kwargs)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, self.encoding) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self.drop = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2 n_layers)
        so the residual stream's variance does not grow with depth (GPT-2's recipe)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norms keep their ones; encodings/MoE biases keep their own init
            scaled = name.endswith(("attn.out.weight", "mlp.down.weight", "w_down"))
            nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * self.config.n_layers) if scaled else std)
        with torch.no_grad():  # i.i.d. draws either way; permuted, a seed gives the function it gave
            for block in self.blocks:  # when queries and keys used the half-split pair layout
                attn = block.attn
                attn.qkv.weight[: attn.q_size + attn.kv_size] = attn.qk_rows(interleave_pairs)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> ModelOutput:
        if idx.dim() != 2:
            raise ValueError(f"idx must be [batch, time] token ids, got shape {tuple(idx.shape)}")
        b, t = idx.shape
        positions = torch.arange(t, device=idx.device)
        x = self.drop(self.encoding.embed(self.embed(idx), positions))
        bias = None if self._kernel_bias(t, idx.device) else self.encoding.attn_bias(t, t, idx.device, x.dtype)
        if bias is not None:
            bias = bias + _causal_mask(t, idx.device, bias.dtype)
        hooked = type(self.encoding).block_hook is not PositionalEncoding.block_hook
        x = x.view(b * t, -1)  # the residual stream as [tokens, d_model] (see Attention.forward)
        for i, block in enumerate(self.blocks):
            # positions=None: rotary encodings use their cached 0..T-1 table (no per-layer check).
            x = block(x, None, bias, t)
            if hooked:
                x = self.encoding.block_hook(i, x.view(b, t, -1)).reshape(b * t, -1)
        h = self.norm(x)
        if targets is None:
            return ModelOutput(logits=self.head(h).view(b, t, -1))
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        if self._chunked_loss(targets):
            logits, lm_loss = None, linear_cross_entropy(h, self.head.weight, targets)
        else:
            logits = self.head(h)
            lm_loss = F.cross_entropy(logits.float(), targets.reshape(-1))
            logits = logits.view(b, t, -1)
        aux = self._aux_losses()  # None for a dense model: no add (and autograd node) for a zero
        return ModelOutput(logits=logits, loss=lm_loss if aux is None else lm_loss + aux, lm_loss=lm_loss,
                           aux_loss=torch.zeros((), device=h.device) if aux is None else aux)

    def _kernel_bias(self, t: int, device) -> bool:
        """Whether the attention kernel adds the encoding's bias itself (``score_bias`` through
        folded SDPA, flex or flash-attn, ``lib.encodings.choose_bias_path``) rather than a
        materialised one."""
        c = self.config
        if not has_score_bias(self.encoding) or c.attn_impl == "eager" or any(b.attn.capture for b in self.blocks):
            return False
        p = c.dropout if self.training else 0.0
        return choose_bias_path(self.encoding, t, device, dropout_p=p, flash=c.attn_impl == "flash") != "materialised"

    def _chunked_loss(self, targets: Tensor) -> bool:
        impl = self.config.loss_impl
        if impl == "auto":  # also under torch.compile: 1.08x the compiled full loss at d=256, vocab 4,096 (CPU)
            return (torch.is_grad_enabled()
                    and targets.numel() * self.config.vocab_size >= CHUNKED_LOSS_MIN_LOGITS)
        return impl == "chunked"

    def aux_loss(self, device) -> Tensor:
        """Sum of the auxiliary losses MLP layers set on their last forward (MoE balancing);
        zero for a dense model."""
        total = self._aux_losses()
        return torch.zeros((), device=device) if total is None else total

    def _aux_losses(self) -> Tensor | None:
        total = None
        for block in self.blocks:
            aux = getattr(block.mlp, "aux_loss", None)
            if aux is not None:
                total = aux if total is None else total + aux
        return total

    @torch.no_grad()
    def attention_maps(self, idx: Tensor) -> list[Tensor]:
        """Attention probabilities [B, H, T, T] of every layer for ``idx`` (eager path)."""
        for block in self.blocks:
            block.attn.capture = True
        try:
            self.forward(idx)
            return [block.attn.last_probs for block in self.blocks]
        finally:
            for block in self.blocks:
                block.attn.capture, block.attn.last_probs = False, None

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights once). ``exclude_embeddings`` drops the token
        embedding and an untied output head (Kaplan et al.'s "non-embedding" N)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None, exact: bool = False) -> float:
        """Training FLOPs per token (forward + backward).

        ``exact=False``: 6 N with N all parameters (Chinchilla's C = 6ND). ``exact=True``:
        6 N_non-embedding + 6 d_model V (output logits, counted even when tied) + 12 n_layers T
        d_model (attention scores QK^T and weighted values AV, 2 T d_model FLOPs each per token
        forward, x3 for training, without causal halving, as Chinchilla's Appendix F;
        T = ``seq_len``, default ``max_seq_len``).
        For MoE layers only the active experts count. See ``lib.scaling`` for the full
        Chinchilla Appendix-F accounting.
        """
        c = self.config
        if not exact:
            return 6.0 * self._active_params(exclude_embeddings=False)
        t = c.max_seq_len if seq_len is None else check_int("seq_len", seq_len, 1)
        n = self._active_params(exclude_embeddings=True)
        return 6.0 * n + 6.0 * c.d_model * c.vocab_size + 12.0 * c.n_layers * t * c.d_model

    def _active_params(self, exclude_embeddings: bool) -> int:
        n = self.num_params(exclude_embeddings=exclude_embeddings)
        for block in self.blocks:
            inactive = getattr(block.mlp, "inactive_params_per_token", None)
            if callable(inactive):
                n -= inactive()
        return n

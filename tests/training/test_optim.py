"""lib.training.optim: parameter roles, ExpertMuon against torch's Muon and against an independent
Newton-Schulz reference, AdamW groups, schedules attached to every optimizer."""

import math

import pytest
import torch
from torch import nn

from lib.models import ModelConfig, Transformer
from lib.training import ExpertMuon, build_optimizers, param_roles

# Keller Jordan's published quintic Newton-Schulz coefficients (github.com/KellerJordan/Muon).
A, B, C = 3.4445, -4.7750, 2.0315


def newton_schulz_reference(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The published iteration, written out independently (fp64): X <- aX + (bXX^T + c(XX^T)^2) X."""
    x = g.double()
    transposed = g.shape[0] > g.shape[1]
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = A * x + (B * gram + C * gram @ gram) @ x
    return (x.T if transposed else x).float()


def _moe_model(**moe):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=2, max_seq_len=16, mlp="moe",
                      moe={"n_experts": 4, "top_k": 2, **moe})
    return Transformer(cfg)


@pytest.mark.parametrize("shape, adjust, factor", [
    ((24, 16), None, math.sqrt(24 / 16)),
    ((16, 24), "original", 1.0),
    ((16, 24), "match_rms_adamw", 0.2 * math.sqrt(24)),
])
def test_muon_first_step_is_newton_schulz_of_gradient(shape, adjust, factor):
    torch.manual_seed(1)
    p = nn.Parameter(torch.randn(*shape))
    start = p.detach().clone()
    g = torch.randn(*shape)
    p.grad = g.clone()
    lr = 0.05
    ExpertMuon([p], lr=lr, weight_decay=0.0, adjust_lr_fn=adjust, ns_dtype=torch.float32).step()
    # First step: the momentum buffer is (1-m) g and the Nesterov blend a multiple of g; the
    # iteration normalises by the Frobenius norm, so the update is NS(g).
    expected = start - lr * factor * newton_schulz_reference(g)
    step = (p.detach() - start).norm()
    assert (p.detach() - expected).norm() / step < 1e-5  # fp32 vs fp64 rounding only
    # torch's own Muon (bf16 iteration) lands within bf16 rounding of the same point.
    q = nn.Parameter(start.clone())
    q.grad = g.clone()
    torch.optim.Muon([q], lr=lr, weight_decay=0.0, adjust_lr_fn=adjust).step()
    assert (q.detach() - expected).norm() / step < 0.05
    # Not a trivial update: far from normalised SGD, singular values pushed towards 1.
    sgd = start - lr * factor * g / g.norm()
    assert (p.detach() - sgd).norm() / step > 0.3
    sv = torch.linalg.svdvals((start - p.detach()) / (lr * factor))
    assert sv.min() > 0.3 and sv.max() < 1.5


def test_expert_muon_equals_torch_muon_on_separate_matrices():
    torch.manual_seed(2)
    stack = nn.Parameter(torch.randn(3, 12, 7))
    matrix = nn.Parameter(torch.randn(5, 9))
    separate = [nn.Parameter(stack[e].detach().clone()) for e in range(3)]
    matrix_copy = nn.Parameter(matrix.detach().clone())
    kw = {"lr": 0.1, "weight_decay": 0.05, "momentum": 0.9, "adjust_lr_fn": "match_rms_adamw"}
    ours = ExpertMuon([stack, matrix], ns_dtype=torch.bfloat16, **kw)
    ref = torch.optim.Muon([*separate, matrix_copy], **kw)
    for _ in range(3):
        g, gm = torch.randn(3, 12, 7), torch.randn(5, 9)
        stack.grad, matrix.grad = g.clone(), gm.clone()
        for e in range(3):
            separate[e].grad = g[e].clone()
        matrix_copy.grad = gm.clone()
        ours.step()
        ref.step()
    for e in range(3):  # batched bf16 matmuls may round differently from per-matrix ones
        torch.testing.assert_close(stack[e], separate[e], rtol=0, atol=2e-3)
    assert torch.equal(matrix, matrix_copy)  # 2-D: torch's exact operations
    assert ours.state[stack]["momentum_buffer"].shape == (3, 12, 7)


def test_roles_cover_every_parameter_once():
    model = _moe_model(shared_expert=True)
    roles = param_roles(model)
    seen = [id(p) for items in roles.values() for _, p in items]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))
    names = {r: {n for n, _ in items} for r, items in roles.items()}
    assert "embed.weight" in names["adamw_decay"]                      # tied with the head
    assert {n for n in names["adamw_decay"] if "router" in n} == {"blocks.0.mlp.router.weight",
                                                                   "blocks.1.mlp.router.weight"}
    assert all("norm" in n or p.ndim == 1 for n, p in roles["adamw_no_decay"])
    assert any(n.endswith("mlp.w_gate") for n in names["muon"])          # 3-D expert stacks
    assert any(n.endswith("shared_w_down") for n in names["muon"])
    assert not any("router" in n or "embed" in n for n in names["muon"])


def test_build_optimizers_groups_and_decay():
    model = _moe_model()
    opts, scheds = build_optimizers(model, kind="muon", lr=0.02, weight_decay=0.1)
    assert scheds == [] and isinstance(opts[0], ExpertMuon) and isinstance(opts[1], torch.optim.AdamW)
    ids = [id(p) for o in opts for g in o.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    adamw = opts[1]
    assert adamw.param_groups[0]["lr"] == pytest.approx(0.002)
    for group in adamw.param_groups:
        if any(p.ndim < 2 for p in group["params"]):
            assert group["weight_decay"] == 0.0 and all(p.ndim < 2 for p in group["params"])
    (single,), _ = build_optimizers(model, kind="adamw", lr=3e-3)
    ids = [id(p) for g in single.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert {g["weight_decay"] for g in single.param_groups} == {0.1, 0.0}


def test_schedule_attached_to_each_optimizer():
    from lib.schedules import WarmupCosine

    model = _moe_model()
    sched = WarmupCosine(total_steps=10, warmup_steps=2, min_lr_ratio=0.05)
    opts, scheds = build_optimizers(model, kind="muon", lr=0.04, adamw_lr=0.004, schedule=sched)
    assert len(scheds) == 2
    idx = torch.randint(0, 48, (2, 8))
    for step in range(10):
        for opt, peak in zip(opts, (0.04, 0.004)):
            assert opt.param_groups[0]["lr"] == pytest.approx(peak * sched(step))
        model(idx, targets=idx).loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad()
        for s in scheds:
            s.step()
    assert opts[0].param_groups[0]["lr"] == pytest.approx(0.04 * 0.05)


def test_muon_adamw_fits_a_batch():
    model = _moe_model()
    opts, _ = build_optimizers(model, kind="muon", lr=0.02, adamw_lr=0.01, weight_decay=0.0)
    idx = torch.randint(0, 48, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(15):
        loss = model(idx, targets=idx).loss
        losses.append(loss.item())
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad()
    assert losses[-1] < 0.5 * losses[0]


def test_validation_errors():
    model = _moe_model()
    with pytest.raises(ValueError, match="kind"):
        build_optimizers(model, kind="sgd")
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        build_optimizers(model, adjust_lr_fn="rms")
    with pytest.raises(ValueError, match="lr"):
        build_optimizers(model, lr=-1.0)
    with pytest.raises(ValueError, match="adamw_lr"):
        build_optimizers(model, kind="adamw", adamw_lr=1e-3)
    with pytest.raises(ValueError, match="3-D"):
        ExpertMuon([nn.Parameter(torch.zeros(2, 2, 2, 2))])


@pytest.mark.parametrize("kw, match", [
    (dict(lr=True), r"lr must be a finite number > 0.0, got True"),  # a bool is not a learning rate
    (dict(lr=float("inf")), "lr"),
    (dict(lr=0), "lr"),
    (dict(adamw_lr=False), "adamw_lr"),
    (dict(weight_decay=True), "weight_decay"),
    (dict(muon_weight_decay=-1e-3), "muon_weight_decay"),
    (dict(momentum=1.0), "momentum"),
    (dict(momentum=True), "momentum"),
    (dict(betas=(0.9, True)), r"betas\[1\]"),
    (dict(betas=(0.9, 0.95, 0.99)), "betas"),
    (dict(ns_dtype="fp32"), "ns_dtype"),
])
def test_hyper_parameters_are_checked_by_name(kw, match):
    with pytest.raises(ValueError, match=match):
        build_optimizers(_moe_model(), **kw)


def test_expert_muon_checks_its_arguments_and_takes_numpy_numbers():
    import numpy as np

    p = [nn.Parameter(torch.zeros(3, 4, 5))]
    for kw, match in [(dict(lr=True), "lr"), (dict(ns_steps=5.0), "ns_steps"), (dict(nesterov=1), "nesterov"),
                      (dict(momentum=-0.1), "momentum"), (dict(ns_dtype=torch.int32), "ns_dtype")]:
        with pytest.raises(ValueError, match=match):
            ExpertMuon(p, **kw)
    opt = ExpertMuon(p, lr=np.float32(0.5), ns_steps=np.int64(3))
    assert opt.defaults["lr"] == 0.5 and opt.defaults["ns_steps"] == 3 and type(opt.defaults["ns_steps"]) is int
    opts, _ = build_optimizers(_moe_model(), lr=np.float64(0.01))
    assert [type(o).__name__ for o in opts] == ["ExpertMuon", "AdamW"]
    assert opts[1].defaults["lr"] == pytest.approx(0.001)

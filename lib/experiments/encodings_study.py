"""Notebook 02's recipe: train small models on long-context tasks at one length to a criterion,
evaluate them at 1x-8x that length under each encoding (and under another encoding at
evaluation, as YaRN or LongRoPE on RoPE weights), score the RULER-style suite with Wilson
intervals and Holm-corrected comparisons against RoPE, measure perplexity by position beyond the
training length, draw the wavelength / collision explorer, and measure the attractor state's
memory against a real KV cache.

The suite (``SUITE_TASKS``): single NIAH, multi-key NIAH, MQAR and variable tracking from
``lib.data.longctx``. Each (task, encoding, seed) model trains until its exact match on a fixed
validation batch at the training length reaches ``target_accuracy`` (checked every
``check_every`` steps) or ``max_steps``; the steps used are reported. Accuracies pool every
seed's fresh evaluation samples (trials = seeds x ``n_eval``); comparisons against RoPE pair
the same evaluation samples (same seed, same length), so the per-sample difference is a paired
sample.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from functools import partial

import numpy as np
import pandas as pd
import torch

from lib.core import (
    check_choice,
    check_fraction,
    check_int,
    check_int_array,
    decide_difference,
    holm,
    in_batch,
    median_censored,
    min_detectable_effect,
    paired_difference,
    process_map,
    seed_everything,
    wilson_interval,
)
from lib.data import TaskData, answer_scores, make_task, niah_heatmap, synthetic_corpus
from lib.encodings import build_encoding, collision_report, kv_cache_nbytes, wavelengths
from lib.models import ModelConfig, Transformer, output_cache, tiny_llama
from lib.scaling import PlannedRun
from lib.training import TrainConfig, train

# The RULER-style suite: label -> the lib.data.longctx generator it draws from.
SUITE_TASKS = {"niah": "niah", "niah_multikey": "niah", "mqar": "mqar", "vt": "variable_tracking"}

# Notebook 02's profiles. quick: CPU, minutes (3 seeds, width 48, two tasks of the suite at
# train length 32 (single NIAH with one-token values, which a 2-layer model learns in ~100 steps;
# multi-key NIAH and MQAR took longer than the quick budget in trials), one LM seed). full: the real experiment, meant for a GPU (5 seeds, width 128,
# the four tasks at length 64, 1x-8x, every encoding, 3 LM seeds).
QUICK = dict(
    collision_max=100_000, train_len=32, seeds=(0, 1, 2), ratios=(1, 2, 4, 8), n_eval=64,
    depths=(0.0, 0.5, 1.0), d_model=48, n_layers=2, lr=6e-3, batch_size=32,
    tasks={"niah": {"value_len": 1}, "vt": {"n_hops": 2}}, max_steps=300, check_every=25, target_accuracy=0.9,
    n_check=64, extra_variants=False, lm_steps=400, lm_lr=3e-3, lm_seeds=(0,), lm_batch_size=16, lm_windows=32,
    lm_tokens=200_000, cost_lens=(128, 512, 1024), workers=2, threads=1,
)
FULL = dict(
    train_len=64, seeds=(0, 1, 2, 3, 4), n_eval=256, depths=(0.0, 0.25, 0.5, 0.75, 1.0), d_model=128, lr=3e-3,
    tasks={"niah": {"value_len": 2}, "niah_multikey": {"n_needles": 4, "value_len": 2}, "mqar": {"n_pairs": 8},
           "vt": {"n_hops": 3}},
    max_steps=3000, check_every=50, target_accuracy=0.95, n_check=256, extra_variants=True,
    lm_steps=2000, lm_seeds=(0, 1, 2), lm_batch_size=32, lm_windows=256, lm_tokens=2_000_000,
    cost_lens=(256, 1024, 4096), workers=1, threads=None,
)
# smoke: the full profile's shapes, tasks, encodings, seeds and code paths with a few steps of
# small batches and few evaluation samples, so the whole notebook runs end to end on a CPU in
# about a minute (at the full batch of 32, its 220 suite trainings took half of it).
SMOKE = dict(max_steps=2, check_every=1, n_check=8, n_eval=4, batch_size=4, lm_steps=2, lm_windows=2,
             lm_batch_size=4, lm_tokens=20_000)

REFERENCE = "rope"  # the encoding every other one is compared against
# The RoPE base the suite trains with (``lib.encodings.RoPE``'s default); Llama 3's scaling
# defaults to its own 500,000, so the eval-time variant names the trained one.
ROPE_BASE = 10_000.0


def suite_variants(extra: bool = False) -> dict:
    """The encodings the suite trains and evaluates: label -> ``{"encoding", "encoding_kwargs",
    "eval_encoding"}``. RoPE weights are also evaluated, without retraining, under YaRN and
    LongRoPE whose factor follows the evaluation length. ``extra`` (full profile) adds the
    original additive spiral, the hybrid, sinusoidal, partial RoPE, the attractor, and the other
    context extensions of RoPE weights at evaluation: dynamic NTK, position interpolation (PI),
    static NTK-aware scaling and Llama 3's (at the RoPE base the weights were trained with)."""
    variants = {
        "rope": {"encoding": "rope"},
        "rope + yarn@eval": {"encoding": "rope", "eval_encoding": ("yarn", {"factor": "auto"})},
        "rope + longrope@eval": {"encoding": "rope", "eval_encoding": ("longrope", {"factor": "auto"})},
        "none (NoPE)": {"encoding": "none"},
        "alibi": {"encoding": "alibi"},
        "rope_proportional (p=0.5)": {"encoding": "rope_proportional", "encoding_kwargs": {"rotary_fraction": 0.5}},
        "pi_spiral (scale 0.05)": {"encoding": "pi_spiral", "encoding_kwargs": {"scale": 0.05}},
        "pi_spiral_rotary": {"encoding": "pi_spiral_rotary"},
    }
    if extra:
        variants |= {
            "rope + dynamicNTK@eval": {"encoding": "rope", "eval_encoding": ("rope_dynamic", {"factor": 2.0})},
            "rope + PI@eval": {"encoding": "rope", "eval_encoding": ("rope_linear", {"factor": "auto"})},
            "rope + NTK@eval": {"encoding": "rope", "eval_encoding": ("rope_ntk", {"factor": "auto"})},
            "rope + llama3@eval": {"encoding": "rope",
                                   "eval_encoding": ("llama3", {"factor": "auto", "base": ROPE_BASE})},
            "pi_spiral (original)": {"encoding": "pi_spiral"},
            "pi_spiral_hybrid": {"encoding": "pi_spiral_hybrid"},
            "sinusoidal": {"encoding": "sinusoidal"},
            "rope_partial (0.5)": {"encoding": "rope_partial", "encoding_kwargs": {"rotary_fraction": 0.5}},
            "attractor(rope)": {"encoding": "attractor", "encoding_kwargs": {"d_state": 16, "layers": "last:1"}},
        }
    return variants


def _settings(settings) -> dict:
    return settings if isinstance(settings, dict) else vars(settings)


def _model_config(encoding: str, encoding_kwargs: dict | None, max_seq_len: int, *, d_model: int, n_layers: int,
                  n_heads: int, vocab_size: int) -> ModelConfig:
    kwargs = dict(encoding_kwargs or {})
    if encoding == "attractor":
        kwargs.setdefault("n_layers", n_layers)
    return ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       max_seq_len=max_seq_len, encoding=encoding, encoding_kwargs=kwargs)


class StopAtAccuracy:
    """A ``lib.training.train`` callback: every ``every`` steps, score exact match on a fixed
    ``batch`` (a ``TaskBatch`` at the training length) and stop the run once it reaches
    ``target``. ``reached_at`` is the step it did (None if never); ``checks`` the history."""

    def __init__(self, batch, target: float, every: int):
        self.batch = batch
        self.target = check_fraction("target_accuracy", target)
        self.every = check_int("check_every", every, 1)
        self.reached_at: int | None = None
        self.checks: list[tuple[int, float]] = []

    def on_step_end(self, state) -> None:
        if state.step % self.every and state.step != state.config.steps:
            return
        accuracy = float((answer_scores(state.model, self.batch) == 1).mean())
        self.checks.append((state.step, accuracy))
        if accuracy >= self.target:
            self.reached_at = state.step
            state.stop = True


def train_on_task(encoding: str, task: str, train_len: int, steps: int, seed: int = 0, *,
                  encoding_kwargs: dict | None = None, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                  batch_size: int = 32, lr: float = 3e-3, vocab_size: int = 64, task_kwargs: dict | None = None,
                  target_accuracy: float | None = None, check_every: int = 25, n_check: int = 64,
                  device=None, progress: bool = False):
    """Train a ``lib.models.Transformer`` with ``encoding`` on ``task`` at length ``train_len``.

    The model's ``max_seq_len`` is ``train_len`` (so YaRN/NTK/LongRoPE "original length" and the
    hybrid's K default refer to it). Loss is on answer tokens only. ``steps`` is the run's length
    (its LR schedule spans it); with ``target_accuracy`` the run stops early once exact match on
    ``n_check`` fixed validation samples at ``train_len`` reaches it (checked every
    ``check_every`` steps). Returns ``lib.training.TrainResult`` whose ``final`` also holds
    ``reached`` (bool, or None without a criterion) and ``steps`` (steps used).
    """
    seed_everything(seed)
    config = _model_config(encoding, encoding_kwargs, train_len, d_model=d_model, n_layers=n_layers,
                           n_heads=n_heads, vocab_size=vocab_size)
    model = Transformer(config)
    data = TaskData(task, vocab_size=vocab_size, **(task_kwargs or {}))
    tc = TrainConfig(steps=steps, batch_size=batch_size, seq_len=train_len, lr=lr, seed=seed, device=device,
                     eval_every=0, eval_batches=1, progress=progress, desc=f"{encoding}/{seed}")
    callbacks = []
    if target_accuracy is not None:
        check = make_task(task, check_int("n_check", n_check, 1), train_len, 777_000 + seed, vocab_size=vocab_size,
                          **(task_kwargs or {}))
        callbacks.append(StopAtAccuracy(check, target_accuracy, check_every))
    result = train(model, data, tc, callbacks=callbacks)
    result.final["reached"] = callbacks[0].reached_at is not None if callbacks else None
    return result


def with_encoding(model, encoding: str, **encoding_kwargs):
    """A copy of a trained ``lib.models.Transformer`` using another encoding at evaluation
    (e.g. RoPE-trained weights with ``yarn``): same weights, new ``ModelConfig.encoding``."""
    config = replace(model.config, encoding=encoding, encoding_kwargs=encoding_kwargs)
    clone = Transformer(config).to(next(model.parameters()).device)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def _eval_model(model, eval_encoding, length: int, train_len: int):
    """``model`` itself, or its copy under ``eval_encoding`` (``"factor": "auto"`` becomes
    ``max(1, length / train_len)``)."""
    if eval_encoding is None:
        return model
    enc_kw = dict(eval_encoding[1])
    if enc_kw.get("factor") == "auto":
        enc_kw["factor"] = max(1.0, length / train_len)
    return with_encoding(model, eval_encoding[0], **enc_kw)


def evaluate_extrapolation(model, task: str, train_len: int, eval_lens, seed: int = 0, *,
                           eval_encoding: tuple[str, dict] | None = None, n_eval: int = 64, depths=None,
                           heatmap_lens=None, task_kwargs: dict | None = None,
                           per_example: bool = False):
    """Exact-match / token accuracy of a trained model at each of ``eval_lens`` (fresh samples:
    the same ones for every model evaluated with the same ``seed``, so comparisons pair).

    ``eval_encoding=("yarn", {"factor": s})`` evaluates the weights under another encoding;
    ``"factor": "auto"`` uses ``max(1, length / train_len)`` at each length. ``depths`` (tasks
    niah/passkey) adds a length x depth exact-match grid over ``heatmap_lens`` (default eval_lens).
    Returns ``(by_length, heatmap or None)``, and with ``per_example`` a third frame (length,
    example, exact) of every sample's exact match.
    """
    check_int("n_eval", n_eval, 1)
    kw = dict(task_kwargs or {}, vocab_size=model.config.vocab_size)
    rows, heat, examples = [], [], []
    for length in eval_lens:
        length = check_int("eval_lens", length, 1)
        eval_model = _eval_model(model, eval_encoding, length, train_len)
        scores = answer_scores(eval_model, make_task(task, n_eval, length, 10_000 + seed + length, **kw))
        rows.append({"length": length, "token_accuracy": float(scores.mean()),
                     "exact_match": float((scores == 1).mean()), "n": n_eval})
        examples.append(pd.DataFrame({"length": length, "example": np.arange(n_eval), "exact": scores == 1}))
        if depths is not None and length in (heatmap_lens or eval_lens):
            heat.append(niah_heatmap(eval_model, [length], depths, n=max(8, n_eval // 2), seed=20_000 + seed,
                                     task=task, **kw))
    by_length = pd.DataFrame(rows)
    by_length["ratio"] = by_length["length"] / train_len
    heatmap = pd.concat(heat, ignore_index=True) if heat else None
    if per_example:
        return by_length, heatmap, pd.concat(examples, ignore_index=True)
    return by_length, heatmap


def _train_for_sweep(encoding: str, encoding_kwargs: dict | None, seed: int, **kwargs):
    """One training run of ``extrapolation_sweep`` (a ``process_map`` job): the trained model and
    its seconds, steps used and whether it reached the criterion."""
    start = time.perf_counter()
    result = train_on_task(encoding, seed=seed, encoding_kwargs=encoding_kwargs, **kwargs)
    return result.model.eval(), time.perf_counter() - start, result.final["steps"], result.final["reached"]


def _training_key(spec: dict, seed: int) -> tuple:
    return spec["encoding"], json.dumps(spec.get("encoding_kwargs", {}), sort_keys=True), seed


def _distinct_trainings(variants: dict, seeds) -> dict:
    """``_training_key`` -> (the first label that trains it, its spec): variants sharing an
    encoding and its kwargs share their trained models (e.g. RoPE evaluated plainly and with YaRN)."""
    keys = {}
    for label, spec in variants.items():
        for seed in seeds:
            keys.setdefault(_training_key(spec, seed), (label, spec))
    return keys


def extrapolation_sweep(variants: dict, task: str, train_len: int, eval_lens, steps: int, seeds=(0, 1, 2), *,
                        task_kwargs: dict | None = None, n_eval: int = 64, depths=None, heatmap_lens=None,
                        heatmap_labels=None, progress: bool = False, target_accuracy: float | None = None,
                        check_every: int = 25, n_check: int = 64, workers: int = 1, threads: int | None = None,
                        **train_kwargs) -> dict:
    """Train every distinct training encoding once per seed, evaluate every variant.

    ``variants``: label -> ``{"encoding": name, "encoding_kwargs": {...}, "eval_encoding": None |
    (name, kwargs)}``. Variants sharing (encoding, encoding_kwargs) share their trained models (e.g.
    RoPE evaluated plainly and with YaRN). ``steps`` is each run's length, or with
    ``target_accuracy`` its cap (see ``train_on_task``). The runs train in ``workers`` processes
    on ``threads`` torch threads each (``lib.core.process_map``); evaluation runs here. The depth
    grid (``depths``) is computed for ``heatmap_labels`` (default: every variant). Returns
    ``{"by_length": DataFrame(label, seed, length, ratio, token_accuracy, exact_match, n),
    "examples": DataFrame(label, seed, length, example, exact), "heatmap": DataFrame | None,
    "models": {(label, seed): model}, "train_seconds": DataFrame(label, seed, seconds, steps, reached)}``.
    """
    for label, spec in variants.items():
        unknown = set(spec) - {"encoding", "encoding_kwargs", "eval_encoding"}
        if "encoding" not in spec or unknown:
            raise ValueError(f"variant {label!r} needs 'encoding' (and optionally encoding_kwargs, eval_encoding); "
                             f"unknown keys: {sorted(unknown)}")
    keys = _distinct_trainings(variants, seeds)
    job = partial(_train_for_sweep, task=task, train_len=train_len, steps=steps, task_kwargs=task_kwargs,
                  target_accuracy=target_accuracy, check_every=check_every, n_check=n_check, progress=progress,
                  **train_kwargs)
    done = process_map(job, [(spec["encoding"], spec.get("encoding_kwargs"), key[2]) for key, (_, spec) in keys.items()],
                       workers, threads)
    trained = {key: model for key, (model, *_) in zip(keys, done)}
    timing = [{"label": label, "seed": key[2], "seconds": seconds, "steps": used, "reached": reached}
              for (key, (label, _)), (_, seconds, used, reached) in zip(keys.items(), done)]
    by_length, heat, examples, models = [], [], [], {}
    for label, spec in variants.items():
        for seed in seeds:
            model = trained[_training_key(spec, seed)]
            frame, grid, ex = evaluate_extrapolation(
                model, task, train_len, eval_lens, seed, eval_encoding=spec.get("eval_encoding"), n_eval=n_eval,
                depths=depths if heatmap_labels is None or label in heatmap_labels else None,
                heatmap_lens=heatmap_lens, task_kwargs=task_kwargs, per_example=True)
            by_length.append(frame.assign(label=label, seed=seed))
            examples.append(ex.assign(label=label, seed=seed))
            if grid is not None:
                heat.append(grid.assign(label=label, seed=seed))
            models[(label, seed)] = model
    return {"by_length": pd.concat(by_length, ignore_index=True),
            "examples": pd.concat(examples, ignore_index=True),
            "heatmap": pd.concat(heat, ignore_index=True) if heat else None,
            "models": models, "train_seconds": pd.DataFrame(timing)}


def ruler_suite(variants: dict, tasks: dict, train_len: int, ratios, seeds=(0, 1, 2), *, max_steps: int = 300,
                target_accuracy: float = 0.9, check_every: int = 25, n_check: int = 64, n_eval: int = 64,
                depths=None, heatmap_labels=None, progress: bool = False, **train_kwargs) -> dict:
    """The RULER-style suite: for each task of ``tasks`` (label in ``SUITE_TASKS`` -> generator
    kwargs), ``extrapolation_sweep`` trained to the criterion and evaluated at ``ratios`` x
    ``train_len``. The NIAH depth grid (``depths``) is drawn for the ``"niah"`` task only.
    Returns the sweep's frames with a ``task`` column (``"training"`` for the runs: steps used,
    reached, seconds) and ``models`` keyed ``(task, label, seed)``."""
    ratios = check_int_array("ratios", ratios, 1)
    if not tasks:
        raise ValueError("tasks must name at least one task of the suite")
    for label in tasks:
        check_choice("tasks", label, tuple(SUITE_TASKS))
    lens = [int(r) * train_len for r in ratios]
    out = {"by_length": [], "examples": [], "heatmap": [], "training": [], "models": {}}
    for label, kwargs in tasks.items():
        sweep = extrapolation_sweep(variants, SUITE_TASKS[label], train_len, lens, max_steps, seeds,
                                    task_kwargs=kwargs, n_eval=n_eval,
                                    depths=depths if label == "niah" else None, heatmap_labels=heatmap_labels,
                                    target_accuracy=target_accuracy, check_every=check_every, n_check=n_check,
                                    progress=progress, **train_kwargs)
        out["by_length"].append(sweep["by_length"].assign(task=label))
        out["examples"].append(sweep["examples"].assign(task=label))
        out["training"].append(sweep["train_seconds"].assign(task=label))
        if sweep["heatmap"] is not None:
            out["heatmap"].append(sweep["heatmap"].assign(task=label))
        out["models"].update({(label, *key): m for key, m in sweep["models"].items()})
    for key in ("by_length", "examples", "training"):
        out[key] = pd.concat(out[key], ignore_index=True)
    out["heatmap"] = pd.concat(out["heatmap"], ignore_index=True) if out["heatmap"] else None
    out["train_len"] = train_len
    return out


def accuracy_table(examples: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Exact match per (task, label, length) pooled over seeds: ``successes``, ``trials``
    (seeds x samples), ``accuracy`` with its Wilson interval ``low`` / ``high``, and the spread
    of the per-seed accuracies (``seed_sd``, ``seeds``)."""
    rows = []
    for (task, label, length), g in examples.groupby(["task", "label", "length"], sort=False):
        k, n = int(g["exact"].sum()), len(g)
        p, lo, hi = wilson_interval(k, n, confidence)
        per_seed = g.groupby("seed")["exact"].mean()
        rows.append({"task": task, "label": label, "length": int(length), "successes": k, "trials": n,
                     "accuracy": p, "low": lo, "high": hi, "seeds": len(per_seed),
                     "seed_sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan})
    return pd.DataFrame(rows)


def compare_to_reference(examples: pd.DataFrame, reference: str = REFERENCE, alpha: float = 0.05) -> pd.DataFrame:
    """Every (task, label, length) against ``reference`` on the same evaluation samples.

    Per comparison: the paired mean difference of exact match (label - reference) over every
    (seed, sample) pair with its 95% t-interval and paired t-test p-value
    (``lib.core.paired_difference``; identical answers give p = 1), the Holm-adjusted p over the
    whole family (every comparison of the suite, ``lib.core.holm``), the minimum detectable
    effect at 80% power from the spread of the paired differences
    (``lib.core.min_detectable_effect``), and ``decision`` (``lib.core.decide_difference``):
    "better" / "worse" when the adjusted p is at most ``alpha`` and the difference is at least the
    detectable effect, else "cannot decide (difference below the detectable effect)" or "cannot
    decide (not significant after Holm)"."""
    alpha = check_fraction("alpha", alpha)
    if reference not in set(examples["label"]):
        raise ValueError(f"reference {reference!r} is not a label of the examples; labels: "
                         f"{sorted(set(examples['label']))}")
    keyed = examples.set_index(["task", "label", "length", "seed", "example"])["exact"].astype(float).sort_index()
    rows = []
    for (task, label, length), _ in examples.groupby(["task", "label", "length"], sort=False):
        if label == reference:
            continue
        a = keyed.loc[(task, label, length)]
        b = keyed.loc[(task, reference, length)]
        d = paired_difference(a, b)
        diff = (a - b).dropna()
        sd = float(diff.std(ddof=1))
        p = d["t_p"] if math.isfinite(d["t_p"]) else 1.0  # sd 0: every pair agrees (difference 0)
        rows.append({"task": task, "label": label, "length": int(length), "n": d["n"], "diff": d["mean_diff"],
                     "ci_low": d["ci_low"], "ci_high": d["ci_high"], "p": p,
                     "mde": min_detectable_effect(sd, d["n"]) if sd > 0 else 0.0})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p"].to_numpy())
    # Higher exact match is better: decide on the reference minus the label, a loss-like difference.
    words = {"lower": "better", "higher": "worse"}
    out["decision"] = [words.get(v, v) for v in (decide_difference(-r.diff, r.p_holm, r.mde, alpha)
                                                 for r in out.itertuples())]
    return out


def training_table(training: pd.DataFrame, cap: int) -> pd.DataFrame:
    """Steps used per (task, label): the median over every seed with those that never reached
    the criterion right-censored (``lib.core.median_censored``: inf, "not reached", when half
    or more did not), the range of steps run (a censored seed ran to the cap), and how many
    seeds reached the criterion."""
    rows = []
    for (task, label), g in training.groupby(["task", "label"], sort=False):
        median = median_censored(g["steps"].to_numpy(float), g["reached"].to_numpy(bool))
        rows.append({"task": task, "label": label, "median_steps": median,
                     "min_steps": int(g["steps"].min()), "max_steps": int(g["steps"].max()),
                     "reached": int(g["reached"].sum()), "seeds": len(g), "cap": int(cap)})
    return pd.DataFrame(rows)


@torch.no_grad()
def attractor_vs_kv_memory(lengths, *, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                           d_state: int = 16, batch: int = 1, measure_up_to: int = 1024) -> pd.DataFrame:
    """Measured bytes vs sequence length: the KV cache of a random-init transformers Llama of the
    given shape (its real ``DynamicCache`` after a forward, up to ``measure_up_to`` tokens; the
    closed form ``kv_cache_nbytes`` beyond, which the tests check against the real cache) and the
    recurrent state of an attractor in every layer after stepping token by token through
    ``min(length, measure_up_to)`` tokens (the state is updated in place, so its size is fixed)."""
    lengths = check_int_array("lengths", lengths, 1)
    for name, value in (("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads),
                        ("d_state", d_state), ("batch", batch), ("measure_up_to", measure_up_to)):
        check_int(name, value, 1)
    head_dim = d_model // n_heads
    model = tiny_llama("llama", hidden_size=d_model, n_layers=n_layers, n_heads=n_heads,
                       max_position_embeddings=int(lengths.max()), attn_implementation="sdpa")
    enc = build_encoding("attractor", d_model=d_model, n_heads=n_heads, head_dim=head_dim,
                         max_seq_len=int(lengths.max()), d_state=d_state, n_layers=n_layers)
    rows = []
    for t in lengths.tolist():
        if t <= measure_up_to:
            cache = output_cache(model(torch.randint(0, 128, (batch, t)), use_cache=True))
            kv, how = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers), "measured"
        else:
            kv, how = kv_cache_nbytes(n_layers, batch, t, n_heads, head_dim), "closed form"
        states = enc.init_state(batch)
        h = torch.randn(batch, min(t, 256), d_model)
        for i in range(min(t, measure_up_to)):
            for layer in enc.layers:
                enc.step_hook(layer, h[:, i % h.shape[1]], i, states)
        rows.append({"length": t, "kv_cache_bytes": kv, "kv_source": how,
                     "attractor_state_bytes": enc.state_nbytes(states),
                     "attractor_tokens_stepped": min(t, measure_up_to)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- perplexity by position

def _lm_corpus(n_tokens: int, vocab_size: int = 256):
    return synthetic_corpus(n_train_tokens=n_tokens, n_val_tokens=max(n_tokens // 10, 20_000),
                            vocab_size=vocab_size, seed=0)


@torch.no_grad()
def loss_by_position(model, data, seq_len: int, n_windows: int = 32, batch_size: int = 16,
                     eval_encoding: tuple[str, dict] | None = None, train_len: int | None = None) -> np.ndarray:
    """Mean next-token loss (nats) at each position 0..seq_len-1 over ``n_windows`` fixed
    validation windows of ``data`` (a ``lib.data.TokenData``), float64 [seq_len]."""
    seq_len, n_windows = check_int("seq_len", seq_len, 2), check_int("n_windows", n_windows, 1)
    model = _eval_model(model, eval_encoding, seq_len, train_len or model.config.max_seq_len)
    device = next(model.parameters()).device
    total, count = np.zeros(seq_len), 0
    for x, y in data.eval_batches(seq_len, min(batch_size, n_windows), max(1, n_windows // min(batch_size, n_windows))):
        logits = model(x.to(device)).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none")
        total += loss.sum(0).double().cpu().numpy()
        count += x.shape[0]
    return total / count


def position_buckets(train_len: int, ratio: int) -> list[tuple[int, int]]:
    """[0, L), [L, 2L), [2L, 4L), ... up to ``ratio * L`` (L = ``train_len``)."""
    edges = [0, train_len]
    while edges[-1] < ratio * train_len:
        edges.append(min(2 * edges[-1], ratio * train_len))
    return list(zip(edges[:-1], edges[1:]))


def _train_lm(encoding: str, encoding_kwargs: dict | None, seed: int, *, data, train_len: int, steps: int,
              d_model: int, n_layers: int, n_heads: int, batch_size: int, lr: float, device, progress: bool):
    """One language model of ``perplexity_by_position`` (a ``process_map`` job)."""
    seed_everything(seed)
    config = _model_config(encoding, encoding_kwargs, train_len, d_model=d_model, n_layers=n_layers,
                           n_heads=n_heads, vocab_size=data.vocab_size)
    tc = TrainConfig(steps=steps, batch_size=batch_size, seq_len=train_len, lr=lr, seed=seed, device=device,
                     eval_every=0, eval_batches=1, progress=progress, desc=f"lm/{encoding}/{seed}")
    return train(Transformer(config), data, tc).model.eval()


def perplexity_by_position(variants: dict, train_len: int, ratio: int, steps: int, seeds=(0,), *,
                           n_windows: int = 32, batch_size: int = 16, n_tokens: int = 200_000, d_model: int = 48,
                           n_layers: int = 2, n_heads: int = 4, lr: float = 3e-3, device=None,
                           progress: bool = False, workers: int = 1, threads: int | None = None) -> pd.DataFrame:
    """Language models on the synthetic corpus (``lib.data.synthetic_corpus``, vocab 256), one
    per distinct training encoding of ``variants`` and seed, trained at ``train_len`` for
    ``steps`` (in ``workers`` processes on ``threads`` torch threads each, ``lib.core.process_map``),
    then scored here on validation windows of ``ratio * train_len`` tokens. Returns one row per
    (label, seed, bucket of ``position_buckets``): ``loss`` (mean nats/token over the bucket's
    positions) and ``perplexity``."""
    ratio = check_int("ratio", ratio, 1)
    data = _lm_corpus(check_int("n_tokens", n_tokens, 1000))
    keys = _distinct_trainings(variants, seeds)
    jobs = [(spec["encoding"], spec.get("encoding_kwargs"), key[2]) for key, (_, spec) in keys.items()]
    models = process_map(partial(_train_lm, data=data, train_len=train_len, steps=steps, d_model=d_model,
                                 n_layers=n_layers, n_heads=n_heads, batch_size=batch_size, lr=lr, device=device,
                                 progress=progress), jobs, workers, threads)
    trained = dict(zip(keys, models))
    rows = []
    buckets = position_buckets(train_len, ratio)
    for label, spec in variants.items():
        for seed in seeds:
            per_pos = loss_by_position(trained[_training_key(spec, seed)], data, ratio * train_len, n_windows,
                                       batch_size, spec.get("eval_encoding"), train_len)
            for lo, hi in buckets:
                loss = float(per_pos[lo:hi].mean())
                rows.append({"label": label, "seed": seed, "bucket": f"{lo}-{hi}", "lo": lo, "hi": hi,
                             "ratio_hi": hi / train_len, "loss": loss, "perplexity": math.exp(loss)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- reading the results

def _fmt_diff(row) -> str:
    return f"{row['diff']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"


def suite_conclusion(accuracy: pd.DataFrame, comparisons: pd.DataFrame, training: pd.DataFrame,
                     perplexity: pd.DataFrame | None, train_len: int, reference: str = REFERENCE) -> str:
    """The suite's conclusion as Markdown, every number read from the results: per task, the
    reference's exact match at 1x and at the longest length (Wilson intervals), every variant's
    verdict against it at the longest length (Holm-adjusted, "cannot decide" with the detectable
    effect where the test does not separate them), the steps each needed to reach the
    criterion, and the perplexity beyond the training length."""
    lines = []
    longest = int(accuracy["length"].max())
    ratio = longest // train_len
    for task, acc in accuracy.groupby("task", sort=False):
        ref = acc[acc["label"] == reference].set_index("length")
        lines.append(f"- **{task}** ({int(ref['trials'].iloc[0])} trials per cell = "
                     f"{int(ref['seeds'].iloc[0])} seeds x {int(ref['trials'].iloc[0]) // int(ref['seeds'].iloc[0])} "
                     f"samples). {reference}: {ref.loc[train_len, 'accuracy']:.2f} "
                     f"[{ref.loc[train_len, 'low']:.2f}, {ref.loc[train_len, 'high']:.2f}] at 1x, "
                     f"{ref.loc[longest, 'accuracy']:.2f} [{ref.loc[longest, 'low']:.2f}, "
                     f"{ref.loc[longest, 'high']:.2f}] at {ratio}x.")
        cmp = comparisons[(comparisons["task"] == task) & (comparisons["length"] == longest)]
        better = [f"{r['label']} ({_fmt_diff(r)})" for _, r in cmp.iterrows() if r["decision"] == "better"]
        worse = [f"{r['label']} ({_fmt_diff(r)})" for _, r in cmp.iterrows() if r["decision"] == "worse"]
        undecided = [f"{r['label']} ({r['diff']:+.2f}, detectable {r['mde']:.2f})" for _, r in cmp.iterrows()
                     if r["decision"] == "cannot decide (difference below the detectable effect)"]
        unconfirmed = [f"{r['label']} ({r['diff']:+.2f}, detectable {r['mde']:.2f})" for _, r in cmp.iterrows()
                       if r["decision"] == "cannot decide (not significant after Holm)"]
        if better:
            lines.append(f"  At {ratio}x, better than {reference} (difference in exact match, 95% CI; Holm "
                         f"p <= 0.05 and at least the detectable effect): " + "; ".join(better) + ".")
        if worse:
            lines.append(f"  At {ratio}x, worse than {reference}: " + "; ".join(worse) + ".")
        if undecided:
            lines.append(f"  At {ratio}x, cannot decide (difference below the detectable effect): "
                         + "; ".join(undecided) + ".")
        if unconfirmed:
            lines.append(f"  At {ratio}x, cannot decide (not significant after Holm): "
                         + "; ".join(unconfirmed) + ".")
        tr = training[training["task"] == task]
        slow = tr[tr["reached"] < tr["seeds"]]
        text = ", ".join(f"{r['label']} " + (f"{r['median_steps']:.0f}" if math.isfinite(r["median_steps"])
                                             else "not reached") for _, r in tr.iterrows())
        lines.append(f"  Median steps to the criterion: {text}"
                     + (f"; not reached by every seed within {int(tr['cap'].iloc[0])} steps: "
                        + ", ".join(f"{r['label']} ({r['reached']}/{r['seeds']})" for _, r in slow.iterrows())
                        if len(slow) else "") + ".")
    if perplexity is not None and len(perplexity):
        first = perplexity["lo"].min()
        last = perplexity["lo"].max()
        table = perplexity.groupby(["label", "lo"])["perplexity"].mean().unstack()
        parts = [f"{label} {row[first]:.2f} -> {row[last]:.2f}" for label, row in table.iterrows()]
        hi = int(perplexity["hi"].max())
        lines.append(f"- **Perplexity by position** (synthetic corpus, trained at {train_len}, mean over "
                     f"{perplexity['seed'].nunique()} seed(s)), positions 0-{train_len} -> {last}-{hi}: "
                     + "; ".join(parts) + ".")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the explorer

EXPLORER_ENCODINGS = {
    "rope": {}, "rope_linear": {"factor": None}, "rope_ntk": {"factor": None}, "yarn": {"factor": None},
    "llama3": {"factor": None}, "longrope": {"factor": None}, "rope_proportional": {"factor": None},
    "pi_spiral_rotary": {},
}


def explorer_encoding(encoding: str, base: float, factor: float, length: int, head_dim: int = 64):
    """The encoding the explorer draws: ``encoding`` with RoPE ``base`` and context-extension
    ``factor`` (for the variants that take one), original length ``length`` and
    ``max_seq_len = factor * length``."""
    check_choice("encoding", encoding, tuple(EXPLORER_ENCODINGS))
    length = check_int("length", length, 2)
    kwargs = {}
    if encoding != "pi_spiral_rotary":
        kwargs["base"] = float(base)
    if "factor" in EXPLORER_ENCODINGS[encoding]:
        kwargs["factor"] = float(factor)
    if encoding in ("yarn", "llama3", "longrope"):
        kwargs["original_max_seq_len"] = length
    return build_encoding(encoding, d_model=head_dim, n_heads=1, head_dim=head_dim,
                          max_seq_len=int(round(max(factor, 1.0) * length)), **kwargs)


def explorer_figure(encoding: str = "yarn", base: float = 10000.0, factor: float = 4.0, length: int = 256):
    """Two panels for one encoding: the wavelength of every pair against the training length
    (and the extended length), and the collision profile (cos-similarity of PE(0) and PE(d))
    over offsets up to 8x the length, against plain RoPE of the same base."""
    import matplotlib.pyplot as plt

    enc = explorer_encoding(encoding, base, factor, length)
    ref = explorer_encoding("rope", base, 1.0, length)
    long_len = int(round(max(factor, 1.0) * length))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].plot(wavelengths(ref, seq_len=long_len), ".-", color="0.6", label=f"rope (base {base:g})")
    axes[0].plot(wavelengths(enc, seq_len=long_len), ".-", label=f"{encoding}")
    axes[0].axhline(length, color="k", ls="--", lw=1, label=f"training length {length}")
    if long_len != length:
        axes[0].axhline(long_len, color="k", ls=":", lw=1, label=f"extended length {long_len}")
    axes[0].set(yscale="log", xlabel="pair index", ylabel="wavelength (positions)", title="Wavelength per pair")
    axes[0].legend(fontsize=7)
    max_offset = 8 * length
    for e, lab, style in ((ref, "rope", dict(color="0.6", lw=0.6)), (enc, encoding, dict(lw=0.8))):
        r = collision_report(e, max_offset=max_offset)
        axes[1].plot(r["offsets"], r["similarity"], label=f"{lab}: max {r['similarity'][length - 1:].max():.3f} "
                                                         f"beyond d={length}", **style)
    axes[1].axvline(length, color="k", ls="--", lw=1)
    axes[1].set(xscale="log", xlabel="offset d", ylabel="cos-sim(PE(0), PE(d))",
                title=f"Collision profile up to {max_offset}")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{encoding}: base {base:g}, factor {factor:g}, length {length}", fontsize=9)
    fig.tight_layout()
    return fig


def explorer(encoding: str = "yarn", base: float = 10000.0, factor: float = 4.0, length: int = 256):
    """Encoding, RoPE base, extension factor and training length -> wavelengths and collision
    profile (``explorer_figure``). Live ipywidgets in JupyterLab (the first widget is the length
    slider); in batch (``lib.core.in_batch``) the static figure of the given values. Returns the
    figure (batch) or the widget (live)."""
    import matplotlib.pyplot as plt

    if in_batch():
        return explorer_figure(encoding, base, factor, length)
    import ipywidgets as widgets

    length_w = widgets.IntSlider(value=length, min=32, max=4096, step=32, description="length",
                                 continuous_update=False)
    base_w = widgets.FloatLogSlider(value=base, base=10, min=2, max=7, step=0.25, description="base",
                                    continuous_update=False)
    factor_w = widgets.FloatSlider(value=factor, min=1.0, max=32.0, step=0.5, description="factor",
                                   continuous_update=False)
    enc_w = widgets.Dropdown(options=list(EXPLORER_ENCODINGS), value=encoding, description="encoding")

    def show(length, base, factor, encoding):
        plt.show(explorer_figure(encoding, base, factor, length))

    return widgets.interactive(show, length=length_w, base=base_w, factor=factor_w, encoding=enc_w)


# --------------------------------------------------------------------------- planning

def planned_runs(settings) -> list[PlannedRun]:
    """One ``lib.scaling.PlannedRun`` per training run the notebook does: every (task, trained
    encoding, seed) of the suite at its step cap (the criterion may stop it earlier) and every
    (trained encoding, seed) language model of the perplexity measurement."""
    s = _settings(settings)
    variants = suite_variants(s["extra_variants"])
    distinct = {}
    for label, spec in variants.items():
        distinct.setdefault((spec["encoding"], json.dumps(spec.get("encoding_kwargs", {}), sort_keys=True)),
                            (label, spec))
    dims = dict(d_model=s["d_model"], n_layers=s["n_layers"], n_heads=4)
    runs = []
    for task in s["tasks"]:
        for label, spec in distinct.values():
            config = _model_config(spec["encoding"], spec.get("encoding_kwargs"), s["train_len"], vocab_size=64,
                                   **dims)
            for seed in s["seeds"]:
                runs.append(PlannedRun(f"{task}/{label}/seed{seed}", config,
                                       s["max_steps"] * s["batch_size"] * s["train_len"], seq_len=s["train_len"],
                                       batch_size=s["batch_size"]))
    for label, spec in distinct.values():
        config = _model_config(spec["encoding"], spec.get("encoding_kwargs"), s["train_len"], vocab_size=256, **dims)
        for seed in s["lm_seeds"]:
            runs.append(PlannedRun(f"lm/{label}/seed{seed}", config, s["lm_steps"] * s["lm_batch_size"] * s["train_len"],
                                   seq_len=s["train_len"], batch_size=s["lm_batch_size"]))
    return runs

"""Predictive (hybrid) trainer vs plain training: wall-clock to a held-out target, all overheads in.

Runs every arm of ``lib.experiments.predictive_study`` (plain, the null / linear / EMA / RSSM predictors on a
forced phase pattern, the gated RSSM, and plain training with the same number of real gradient
steps) over several seeds, interleaved per seed, and prints the speedup table (paired per seed,
mean and 95% t-interval; goal >= 1.3x at equal final loss within 1%), step costs as ratios to a
plain step measured in the same run, and prediction error / latency against horizon.

    python benchmarks/bench_predictive.py [--profile quick|full] [--device cuda] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from lib.core import pick_device, profile_settings
from lib.experiments.predictive_study import (
    FULL,
    QUICK,
    forced_real_steps,
    horizon_study,
    loss_at_wall,
    make_task,
    memory_table,
    run_protocol,
    step_costs,
    summarize,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=("quick", "full"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--seeds", default=None, help="comma-separated model seeds (default: the profile's)")
    parser.add_argument("--steps", type=int, default=None, help="override the profile's optimizer steps")
    args = parser.parse_args()
    s = profile_settings(args.profile, quick=QUICK, full=FULL)
    if args.seeds:
        s.seeds = tuple(int(x) for x in args.seeds.split(","))
    if args.steps:
        s.steps = args.steps
    if s.threads:
        torch.set_num_threads(s.threads)
    device = pick_device(args.device)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    task = make_task(s, device)
    n_params = sum(p.numel() for p in task.build_model(0).parameters())
    print(f"profile={args.profile} device={device} params={n_params:,} steps={s.steps} "
          f"real steps in forced arms={forced_real_steps(task)} seeds={list(s.seeds)}")
    t0 = time.perf_counter()
    protocol = run_protocol(task, seeds=s.seeds, progress=True)
    table, target = summarize(protocol)
    print(f"\ntarget held-out loss {target:.4f} (plain's worst final loss over seeds + 1%)")
    print(table[["arm", "final_val_loss", "final_ci", "delta_vs_plain", "delta_vs_plain_ci", "delta_vs_matched",
                 "delta_vs_matched_ci", "real_steps", "predicted_share", "moved_on_predicted"]].round(4).to_string(index=False))
    print()
    print(table[["arm", "seeds_reaching_target", "steps_to_target", "wall_to_target_s", "speedup_wall",
                 "speedup_wall_ci", "speedup_steps", "train_wall_s", "meets_goal"]].round(3).to_string(index=False))
    print("\nheld-out loss at equal wall-clock:")
    print(loss_at_wall(protocol).round(4).to_string(index=False))
    print("\nstep cost (median seconds; ratios to a plain step of the same run):")
    print(step_costs(protocol).round(4).to_string(index=False))
    print("\nmemory added over plain training:")
    print(memory_table(protocol).round(3).to_string(index=False))
    study = horizon_study(task, seed=s.seeds[0], horizon=s.horizon, anchor_every=s.anchor_every)
    agg = study.groupby(["predictor", "k"]).agg(step_error=("step_error", "mean"), cum_error=("cum_error", "mean"),
                                                latency_ms=("latency_s", lambda v: 1e3 * v.median()))
    print("\nprediction error and rollout latency vs horizon k:")
    print(agg.unstack(0).round(3).to_string())
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

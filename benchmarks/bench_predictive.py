"""Predictive (hybrid) trainer vs plain training: wall-clock to a held-out target, all overheads in.

Runs every arm of ``lib.experiments.predictive_study`` (plain, the null / linear / EMA / RSSM predictors on a
forced phase pattern, the gated RSSM, the per-weight jump predictor, and plain training with the same
number of real gradient steps) over the profile's LR grid and seeds, each arm at its own best LR, and
prints each arm's wall-clock to the held-out target as a ratio against plain training in the same
run (paired per seed, median over all seeds, a seed that never reaches the target counting as 0;
goal >= 1.3x at no worse final loss), says plainly whether any arm meets the goal, then step
costs as ratios to a plain step of the same run and prediction error / latency against horizon.

    python benchmarks/bench_predictive.py [--profile quick|full] [--device cuda] [--seeds 0,1,2]
                                          [--lrs 1.5e-3,3e-3] [--workers 2]
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
    horizon_table,
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
    parser.add_argument("--lrs", default=None, help="comma-separated peak LRs every arm is swept over")
    parser.add_argument("--workers", type=int, default=None, help="processes sharing the runs")
    args = parser.parse_args()
    s = profile_settings(args.profile, quick=QUICK, full=FULL)
    if args.seeds:
        s.seeds = tuple(int(x) for x in args.seeds.split(","))
    if args.lrs:
        s.lrs = tuple(float(x) for x in args.lrs.split(","))
    if args.workers:
        s.workers = args.workers
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
          f"real steps in forced arms={forced_real_steps(task)} seeds={list(s.seeds)} lrs={list(s.lrs)}")
    t0 = time.perf_counter()
    protocol = run_protocol(task, seeds=s.seeds, lrs=s.lrs, workers=s.workers, threads=s.threads,
                            progress=s.workers == 1)
    table, target = summarize(protocol)
    print("\nfinal held-out loss per arm and peak LR (mean over seeds):")
    print(protocol["lr_table"].pivot(index="arm", columns="lr", values="final_val_loss").round(4).to_string())
    print(f"\ntarget held-out loss {target:.4f} (plain's worst final loss over seeds at its best LR + 1%)")
    print(table[["arm", "lr", "final_val_loss", "final_ci", "delta_vs_plain", "delta_vs_plain_ci", "delta_vs_matched",
                 "delta_vs_matched_ci", "real_steps", "predicted_share", "moved_on_predicted"]].round(4).to_string(index=False))
    print("\nwall-clock to target as a ratio against plain training in the same run (median over all seeds):")
    print(table[["arm", "seeds_reaching_target", "censored", "steps_to_target", "wall_to_target_s", "speedup_wall",
                 "speedup_wall_min", "speedup_wall_max", "speedup_steps", "train_wall_s", "meets_goal"]]
          .round(3).to_string(index=False))
    met = table.loc[table["meets_goal"], "arm"].tolist()
    print(f"\ngoal (>= 1.3x wall-clock to target at no worse final loss): "
          f"{'met by ' + ', '.join(met) if met else 'NOT met by any arm'}")
    print("\nheld-out loss at equal wall-clock:")
    print(loss_at_wall(protocol).round(4).to_string(index=False))
    print("\nstep cost (median seconds; ratios to a plain step of the same run):")
    print(step_costs(protocol).round(4).to_string(index=False))
    print("\nmemory added over plain training:")
    print(memory_table(protocol).round(3).to_string(index=False))
    study = horizon_study(task, seed=s.seeds[0], horizon=s.horizon, anchor_every=s.anchor_every,
                          lr=protocol["best_lr"]["plain"])
    print("\ncumulative prediction error vs horizon k (1 = null predictor; oracle = best a*u + b*m in hindsight):")
    print(horizon_table(study).round(3).to_string())
    latency = study.groupby(["predictor", "k"])["latency_s"].median().unstack(0) * 1e3
    print("\nrollout latency (ms) vs horizon k:")
    print(latency.round(3).to_string())
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

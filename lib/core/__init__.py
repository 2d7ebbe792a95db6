"""Shared foundations every other package may import: runtime (devices, seeds, profiles,
paths), plotting (the one figure helper), checks (argument validation), stats (intervals and
paired tests) and registry (named variants).
"""

from __future__ import annotations

from lib.core.checks import (
    check_bool,
    check_choice,
    check_confidence,
    check_fraction,
    check_int,
    check_int_array,
    check_number,
    check_positive,
    check_positive_array,
    check_same_length,
    check_seed,
)
from lib.core.plotting import (
    FORMATS,
    save_figure,
    save_plotly,
    setup_plotly_for_notebooks,
    use_style,
)
from lib.core.registry import (
    Registry,
)
from lib.core.report import (
    BATCH_ENV,
    fmt_interval,
    in_batch,
    show_markdown,
)
from lib.core.runtime import (
    DEVICE_ENV,
    PROFILES,
    ROOT_ENV,
    autocast,
    data_dir,
    describe_environment,
    figures_dir,
    keyed_rng,
    pick_device,
    profile_settings,
    repo_root,
    seed_everything,
)
from lib.core.stats import (
    holm,
    median_censored,
    min_detectable_effect,
    paired_difference,
    summarize,
    t_critical,
    t_interval,
    verdict,
    wilson_interval,
)

__all__ = [
    "PROFILES",
    "DEVICE_ENV",
    "ROOT_ENV",
    "repo_root",
    "data_dir",
    "figures_dir",
    "pick_device",
    "seed_everything",
    "keyed_rng",
    "autocast",
    "profile_settings",
    "describe_environment",
    "BATCH_ENV",
    "in_batch",
    "show_markdown",
    "fmt_interval",
    "FORMATS",
    "use_style",
    "save_figure",
    "save_plotly",
    "setup_plotly_for_notebooks",
    "check_int",
    "check_number",
    "check_positive",
    "check_fraction",
    "check_choice",
    "check_seed",
    "check_bool",
    "check_positive_array",
    "check_int_array",
    "check_same_length",
    "check_confidence",
    "t_critical",
    "t_interval",
    "summarize",
    "paired_difference",
    "verdict",
    "wilson_interval",
    "holm",
    "min_detectable_effect",
    "median_censored",
    "Registry",
]

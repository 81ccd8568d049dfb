"""Compression and cleanup passes over the IR (DESIGN.md §4)."""
from .counters import Counters, bump, counting
from .pipeline import parse_pass, register_pass, registered_passes, run_pipeline, split_pipeline

__all__ = ["Counters", "bump", "counting", "parse_pass", "register_pass", "registered_passes",
           "run_pipeline", "split_pipeline"]

# Part A of "Calibration and per-channel scale folding": PassManager, rules, cleanup, folds.
from .pipeline import PassManager  # noqa: E402
from .rewrite import CONST, Match, NearMiss, Pattern, RewriteError, Rule, apply_rules, collect_near_misses  # noqa: E402
from . import cleanup, fold_scales  # noqa: E402,F401  (registers the passes)

__all__ += ["PassManager", "CONST", "Match", "NearMiss", "Pattern", "RewriteError", "Rule",
            "apply_rules", "collect_near_misses"]

# Part B of "Calibration and per-channel scale folding": calibration, scale movement, smooth, AWQ.
from . import smooth as _smooth, awq as _awq  # noqa: E402,F401  (registers smooth, awq_scales)
from .calibrate import CalibrationError, ChannelStats, Stats, calibrate  # noqa: E402
from .scale_move import Refusal, ScalePlan, plan_scale  # noqa: E402

__all__ += ["CalibrationError", "ChannelStats", "Stats", "calibrate", "Refusal", "ScalePlan", "plan_scale"]

# OutlierTune (issue 7): per-channel static activation quantisation and the W8A8 baselines.
from . import outliertune as _outliertune  # noqa: E402,F401  (registers outliertune, w8a8)
from . import quant_weights as _quant_weights  # noqa: E402,F401  (registers quant_weights; issue 8)

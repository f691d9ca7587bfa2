"""Hyper-parameter tuning with Optuna (optional dependency): `polyrec tune` and `polyrec.tune.tune`.

Importing this package does not import Optuna; `tune()` does, and says how to install it when missing.
"""

from polyrec.tune.search import (
    COMMON,
    SEARCH_SPACES,
    Choice,
    Float,
    Int,
    LogOrZero,
    Param,
    Width,
    apply_overrides,
    register_search_space,
    search_space,
)
from polyrec.tune.study import BEST, STUDY_DB, TRIALS, TrialSummary, TuneResult, study_name, tune

__all__ = ["BEST", "COMMON", "SEARCH_SPACES", "STUDY_DB", "TRIALS", "Choice", "Float", "Int", "LogOrZero", "Param",
           "TrialSummary", "TuneResult", "Width", "apply_overrides", "register_search_space", "search_space",
           "study_name", "tune"]

"""Model zoo: importing this package registers every built-in model by name."""

from polyrec.models import esmm, mmoe, ple, sharedbottom, singletask  # noqa: F401
from polyrec.models import m2m, pepnet, sarnet, star  # noqa: F401  (multi-scenario)
from polyrec.models import m3oe, sapenet  # noqa: F401  (multi-scenario multi-task)
from polyrec.models import aitm, escm2, fdn, omoe  # noqa: F401  (multi-task)
from polyrec.models import svd, svdpp  # noqa: F401  (rating baselines: biased MF, SVD++)
from polyrec.models import svd, svdpp  # noqa: F401  (rating baselines: biased MF, SVD++)
from polyrec.data.spec import Head
from polyrec.models.base import MODELS, ModelParams, MultiTaskModel, build_model, get_model_class, register
from polyrec.data.spec import ModelSpec, TaskInfo

__all__ = ["MODELS", "Head", "ModelParams", "ModelSpec", "MultiTaskModel", "TaskInfo", "build_model",
           "get_model_class", "register"]

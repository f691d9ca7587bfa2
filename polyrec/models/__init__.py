"""Model zoo: importing this package registers every built-in model by name."""

from polyrec.models import esmm, mmoe, ple, sharedbottom, singletask  # noqa: F401
from polyrec.models.base import MODELS, Head, ModelParams, MultiTaskModel, build_model, get_model_class, register
from polyrec.models.spec import ModelSpec, TaskInfo

__all__ = ["MODELS", "Head", "ModelParams", "ModelSpec", "MultiTaskModel", "TaskInfo", "build_model",
           "get_model_class", "register"]

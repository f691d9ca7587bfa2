"""Hyper-parameter search spaces: a common part plus one entry per model family, all in this file.

A space is a list of `Param`s; each names the config key it sets ("train.lr", "model.n_experts") and
samples its value from an Optuna trial (define-by-run: conditional parameters are fine). Extend with
`register_search_space("mymodel", [Int("model.n_experts", 2, 8), ...])`. A registered model without an
entry here still gets the common part plus, by field name, expert counts and widths if its Params has them.

Widths (`Width`) keep the depth and shape of the base list and scale it: expert_dims [128, 64] with a
sampled width 32 becomes [32, 16]; the base list is the config's value, else the model's default.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from polyrec.config import RunConfig, load_config, set_dotted


@dataclass(frozen=True)
class Param:
    key: str  # the config key it sets: "section.name"

    def sample(self, trial: Any, base: Any) -> Any:  # pragma: no cover - abstract
        """The config value for this trial; `base` is the key's value in the base config."""
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Float(Param):
    low: float = 0.0
    high: float = 1.0
    log: bool = False

    def sample(self, trial: Any, base: Any) -> float:
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def describe(self) -> str:
        return f"{self.key}: {'log ' if self.log else ''}{self.low:g}..{self.high:g}"


@dataclass(frozen=True)
class Int(Param):
    low: int = 1
    high: int = 8

    def sample(self, trial: Any, base: Any) -> int:
        return trial.suggest_int(self.key, self.low, self.high)

    def describe(self) -> str:
        return f"{self.key}: {self.low}..{self.high}"


@dataclass(frozen=True)
class Choice(Param):
    choices: tuple[Any, ...] = ()

    def sample(self, trial: Any, base: Any) -> Any:
        return trial.suggest_categorical(self.key, list(self.choices))

    def describe(self) -> str:
        return f"{self.key}: {{{', '.join(map(str, self.choices))}}}"


@dataclass(frozen=True)
class LogOrZero(Param):
    """0, or a log-uniform value in [low, high]: two trial parameters, `<key>>0` (bool) and `<key>`."""

    low: float = 1e-7
    high: float = 1e-3

    def sample(self, trial: Any, base: Any) -> float:
        if not trial.suggest_categorical(f"{self.key}>0", [False, True]):
            return 0.0
        return trial.suggest_float(self.key, self.low, self.high, log=True)

    def describe(self) -> str:
        return f"{self.key}: 0 or log {self.low:g}..{self.high:g}"


@dataclass(frozen=True)
class Width(Param):
    """A layer-size list of the base list's shape, scaled so its first layer has the sampled width."""

    choices: tuple[int, ...] = (32, 64, 128)

    def sample(self, trial: Any, base: Any) -> list[int]:
        width = trial.suggest_categorical(f"{self.key}.width", list(self.choices))
        return scaled_dims(list(base or []), width)

    def describe(self) -> str:
        return f"{self.key}: first layer {{{', '.join(map(str, self.choices))}}}, shape kept"


def scaled_dims(base: list[int], width: int) -> list[int]:
    if not base or base[0] <= 0:
        return [width]
    return [max(1, round(width * d / base[0])) for d in base]


# --- the spaces ----------------------------------------------------------------------------------
COMMON: tuple[Param, ...] = (
    Float("train.lr", 1e-4, 1e-2, log=True),
    Choice("model.embed_dim", (8, 16, 32)),
    Float("model.dropout", 0.0, 0.3),
    LogOrZero("train.weight_decay", 1e-7, 1e-3),
)

EXPERT_WIDTH = Width("model.expert_dims", (32, 64, 128))
MLP_WIDTH = (64, 128, 256)

SEARCH_SPACES: dict[str, tuple[Param, ...]] = {
    # multi-task
    "mmoe": (Int("model.n_experts", 2, 8), EXPERT_WIDTH),
    "ple": (Int("model.n_shared_experts", 1, 4), Int("model.n_task_experts", 1, 4), EXPERT_WIDTH),
    "sharedbottom": (Width("model.bottom_dims", MLP_WIDTH),),
    "singletask": (Width("model.hidden_dims", MLP_WIDTH),),
    "esmm": (Width("model.tower_dims", MLP_WIDTH),),
    "escm2": (Width("model.tower_dims", MLP_WIDTH),),
    "aitm": (Width("model.tower_dims", MLP_WIDTH),),
    "omoe": (Int("model.n_experts", 2, 8), EXPERT_WIDTH),
    "fdn": (Int("model.n_pairs", 1, 4), EXPERT_WIDTH),
    # multi-scenario (and multi-scenario multi-task)
    "m2m": (Int("model.n_experts", 2, 8), EXPERT_WIDTH),
    "m3oe": (Int("model.n_experts", 2, 8), EXPERT_WIDTH),
    "sapenet": (Int("model.n_experts", 1, 4), EXPERT_WIDTH),
    "sarnet": (Int("model.n_shared_experts", 1, 4), Int("model.n_scenario_experts", 1, 2), EXPERT_WIDTH),
    "star": (Width("model.fcn_dims", MLP_WIDTH),),
    "pepnet": (Width("model.tower_dims", MLP_WIDTH),),
}

# for models without an entry: these fields, when the model's Params has them
BY_FIELD: dict[str, Param] = {
    "n_experts": Int("model.n_experts", 2, 8),
    "n_shared_experts": Int("model.n_shared_experts", 1, 4),
    "n_task_experts": Int("model.n_task_experts", 1, 4),
    "expert_dims": EXPERT_WIDTH,
}


def register_search_space(model: str, params: Sequence[Param]) -> None:
    """Set the model-specific part of `model`'s space (added to COMMON)."""
    SEARCH_SPACES[model] = tuple(params)


def _model_fields(model: str) -> dict[str, Any]:
    from polyrec.models import get_model_class

    return get_model_class(model).Params.model_fields


def search_space(model: str, fixed: Iterable[str] = ()) -> list[Param]:
    """COMMON + the model's part, without the keys in `fixed` (pinned with --set) or keys the model lacks."""
    fields = _model_fields(model)
    extra = SEARCH_SPACES.get(model)
    if extra is None:
        extra = tuple(p for f, p in BY_FIELD.items() if f in fields)
    fixed = set(fixed)
    space = []
    for p in (*COMMON, *extra):
        section, name = p.key.split(".", 1)
        if p.key in fixed or (section == "model" and name != "embed_dim" and name not in fields):
            continue
        space.append(p)
    return space


def base_value(cfg: RunConfig, key: str) -> Any:
    """The key's value in the config, or for an unset model parameter, the model's default."""
    section, name = key.split(".", 1)
    if section == "model":
        params = cfg.model.params()
        if name in params:
            return params[name]
        if name == "embed_dim":
            return cfg.model.embed_dim
        field = _model_fields(cfg.model.name).get(name)
        return None if field is None else field.get_default(call_default_factory=True)
    return getattr(getattr(cfg, section), name)


def sample(space: Sequence[Param], trial: Any, cfg: RunConfig) -> dict[str, Any]:
    """Config overrides {key: value} for one trial."""
    return {p.key: p.sample(trial, base_value(cfg, p.key)) for p in space}


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """`cfg` with the overrides set (validated like a config file; PolyrecError when invalid)."""
    raw = cfg.model_dump(mode="json")
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return load_config(None, None, base=raw)

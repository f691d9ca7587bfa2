"""Run configuration: YAML file + `--set key=value` overrides, validated with unknown-key errors."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from polyrec.data.schema import format_validation_error, model_keys
from polyrec.data.sources import JoinSpec, ReadOptions
from polyrec.errors import PolyrecError, close_matches
from polyrec.layers.sequence import SequenceEncoderConfig, SequenceKind
from polyrec.utils.io import read_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_ratios(ratios: tuple[float, ...], key: str) -> None:
    """Train/val/test fractions: each > 0 (an empty split cannot validate or test) and summing to 1."""
    if len(ratios) != 3 or any(not r > 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(f"{key} must be three numbers, each > 0, summing to 1 (train, val, test); got {list(ratios)}")


def check_device(device: str) -> None:
    """train.device must exist on this machine (a CPU-only PyTorch build has no CUDA)."""
    import torch

    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        if not torch.cuda.is_available():
            raise PolyrecError(f"train.device={device}, but this PyTorch build ({torch.__version__}) sees no CUDA GPU. "
                               "Use --set train.device=cpu, or install a CUDA build of torch on a GPU machine.")
        if index >= torch.cuda.device_count():
            raise PolyrecError(f"train.device={device}, but only {torch.cuda.device_count()} CUDA device(s) exist.")
    elif device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise PolyrecError("train.device=mps, but Apple's MPS backend is not available here; use train.device=cpu.")


def _absolute(path: str | None) -> str | None:
    """$VARS expanded, relative paths resolved against the working directory once: a run works from anywhere."""
    if path is None or "://" in path:
        return path
    return os.path.abspath(Path(os.path.expandvars(path)).expanduser())


class FilesConfig(ReadOptions):
    """Your own files (the built-in `files` source): one table to split (`train` or `path`, a file, a shard
    folder or a glob), or official `train` + `val` + `test` files; `joins` add side tables."""

    train: str | None = None
    path: str | None = None  # same as train, when the file is one log to be split
    val: str | None = None
    test: str | None = None
    joins: list[JoinSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _resolve(self) -> "FilesConfig":
        if (self.train is None) == (self.path is None):
            raise ValueError("data.files needs exactly one of train or path")
        if (self.val is None) != (self.test is None):
            raise ValueError("data.files: give both val and test files (an official split) or neither")
        for key in ("train", "path", "val", "test"):
            object.__setattr__(self, key, _absolute(getattr(self, key)))
        object.__setattr__(self, "joins", [j.model_copy(update={"path": _absolute(j.path)}) for j in self.joins])
        return self

    @property
    def main(self) -> str:
        return self.train or self.path


class DataConfig(_Strict):
    dataset: str = "movielens-100k"
    schema_file: str | None = None  # YAML schema replacing the recipe's default
    files: FilesConfig | None = None  # your own files: dataset becomes the built-in `files` source
    # None: the recipe's default. temporal: per user by time; global_temporal: one time cut for everyone;
    # leave_last_out: per user, the last interaction tests and the second-to-last validates; kfold: `folds`
    # seeded folds, fold `fold` tests, a seeded ratios[1] share of the other folds validates, the rest trains;
    # cold_start: a seeded `cold_fraction` of the users and/or items (`cold_by`) never trains, half of them
    # validate and half test, and the other rows split at random by `ratios` (polyrec.data.coldstart)
    split: Literal["random", "temporal", "global_temporal", "leave_last_out", "official", "kfold",
                   "cold_start"] | None = None
    cold_fraction: float = Field(0.1, gt=0, lt=1)  # data.split=cold_start: the share of users/items held out
    # data.split=cold_start: what is held out: user, item, or both ([user, item]: each kind's fraction)
    cold_by: list[Literal["user", "item"]] = Field(default_factory=lambda: ["user"], min_length=1)

    @field_validator("cold_by", mode="before")
    @classmethod
    def _one_role(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else list(dict.fromkeys(v)) if isinstance(v, (list, tuple)) else v
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    folds: int | None = Field(None, ge=2)  # data.split=kfold: the number of folds (cross-validation)
    fold: int = Field(0, ge=0)  # data.split=kfold: the fold that tests (0 .. folds-1)
    split_seed: int | None = None  # None: the run's seed (same seed = same split)
    options: dict[str, Any] = Field(default_factory=dict)  # recipe-specific options
    # replace the schema's tasks: names of schema tasks, or task specs such as
    # {name: rating, type: regression} or {name: like_if_click, column: like, space: click}
    tasks: list[str | dict[str, Any]] | None = None
    # larger-than-memory logs (polyrec.data.chunked): read your own Parquet files this many rows at a time, in two
    # passes; the splits' columns are then read from memory maps and training shuffles by blocks
    chunk_rows: int | None = Field(None, ge=1)
    # chunked training: rows read together (a contiguous block), and rows shuffled together (random blocks); a
    # window at least the split's size is a full shuffle
    block_rows: int = Field(4096, ge=1)
    shuffle_window_rows: int = Field(1 << 20, ge=1)

    @model_validator(mode="after")
    def _files_source(self) -> "DataConfig":
        check_ratios(self.ratios, "data.ratios")
        if (self.split == "kfold") != (self.folds is not None):
            raise ValueError("data.split=kfold and data.folds go together (e.g. data.split=kfold, data.folds=5)")
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"data.fold={self.fold} must be below data.folds={self.folds}")
        self.schema_file = _absolute(self.schema_file)
        if self.files is not None:
            if "dataset" not in self.model_fields_set:
                self.dataset = "files"
            elif self.dataset != "files":
                raise ValueError(f"data.files reads your own files; it cannot be combined with "
                                 f"data.dataset={self.dataset!r} (drop one of them)")
            if self.schema_file is None:
                raise ValueError("data.files needs data.schema_file (polyrec schema infer FILE drafts one)")
        elif self.dataset == "files":
            raise ValueError("data.dataset=files needs data.files (or polyrec train --data PATH --schema S.yaml)")
        return self


class ModelConfig(BaseModel):
    """`name`, `embed_dim`, and any model-specific keys (validated by the model's own Params)."""

    model_config = ConfigDict(extra="allow")
    name: str = "mmoe"
    embed_dim: int = Field(16, ge=1)
    sequence_encoder: SequenceKind = "mean"  # the histories' encoder (other lists: mean), unless `sequences` names it
    sequences: dict[str, SequenceEncoderConfig] = Field(default_factory=dict)  # per sequence field

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(_Strict):
    optimizer: Literal["adam", "adamw", "sgd", "adagrad", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    embedding_weight_decay: float = Field(0.0, ge=0)  # decay on embedding tables only when asked
    sparse_embeddings: bool | Literal["auto"] = "auto"  # auto: lazy sparse updates for big tables
    momentum: float = Field(0.0, ge=0)  # sgd / rmsprop
    batch_size: int = Field(1024, ge=1)
    eval_batch_size: int = Field(16384, ge=1)
    epochs: int = Field(10, ge=1)
    patience: int = Field(2, ge=0)  # epochs without improvement before stopping; 0 = never stop early
    monitor: str = "overall/mean_auc"  # a validation metric key, or a weighted sum "0.7*click/auc + 0.3*like/auc"
    monitor_mode: Literal["max", "min"] | None = None  # None: inferred (min for logloss/mse/mae/rmse)
    seed: int = 42
    threads: int | None = Field(None, ge=1)
    device: str = "cpu"  # cpu, cuda, cuda:N or mps; availability is checked by check_device() before a run
    # bf16: forward passes under torch.autocast(bfloat16); losses, metrics and the stored weights stay float32
    precision: Literal["fp32", "bf16"] = "fp32"
    # on an accelerator: the splits' tensors on the device (true), in pinned host memory copied per batch (false),
    # or on the device when they take at most half its free memory (auto); see polyrec.train.device
    split_on_device: bool | Literal["auto"] = "auto"
    balance: str = "auto"  # a balancer name; auto: the model's own (waata: metabalance), else sum
    balance_params: dict[str, Any] = Field(default_factory=dict)
    # task: a head's loss is the mean over the batch (scenarios pooled); scenario_task: the sum over scenarios
    # of the mean over each scenario's rows (the SAPENet paper's L = sum_s sum_t mean BCE); auto: the model's
    # paper's form (`default_loss_reduction` of the model class: scenario_task for sapenet and m3oe), written
    # resolved into config.yaml
    loss_reduction: Literal["auto", "task", "scenario_task"] = "auto"
    # probability of replacing each training row's categorical id by its field's OOV id, so the OOV rows learn
    # what an unseen id should score (with min_freq 1 they are never trained otherwise). 0.02 by measurement:
    # docs/results/oov-cold-slice (ML-1M, 3 seeds: new-user AUC +0.005-0.006 on both tasks, all-rows AUC
    # unchanged within 0.001); 0 = never
    oov_dropout: float = Field(0.02, ge=0, lt=1)
    log_every: int = Field(50, ge=1)  # steps between logged loss/weights lines
    progress: bool = True
    tensorboard: bool = True  # TensorBoard event files in <run_dir>/tensorboard/ (needs the `track` extra)
    # continual re-training: warm-start from this finished CTR-style run folder (its vocabularies grown by the new
    # training split, its weights copied row by row; polyrec.train.warmstart). Optimiser state is not carried over
    init_from: str | None = None

    @field_validator("init_from")
    @classmethod
    def _init_from_absolute(cls, v: str | None) -> str | None:
        return _absolute(v)

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", v):
            raise ValueError(f"{v!r} is not a device: use cpu, cuda, cuda:N or mps")
        return v


class TopKConfig(_Strict):
    """A top-K run (see polyrec.topk): rank every item for every user; judged by Recall/NDCG@K.

    Its data come through the one data path (data.*: source, schema with `user:` and `item:`, derived labels,
    split); its tasks are the schema's binary tasks (data.tasks picks and orders them: the first is ranked)."""

    negatives: int = Field(1, ge=1)  # sampled negatives per training positive, redrawn every epoch
    sampler: Literal["uniform", "popularity"] = "uniform"
    ks: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [10, 20, 50], min_length=1)
    kg: bool = True  # load the dataset's knowledge graph when it has one
    # your own KG instead of the dataset's (e.g. KB4Rec's for movielens-1m): tab-separated files with one
    # header line, RecBole's atomic .kg (head, relation, tail) and .link (item id, entity id)
    kg_triples: str | None = None
    kg_links: str | None = None
    title_column: str | None = "title"  # item titles for `polyrec recommend`, when the rows have this column
    eval_users_chunk: int = Field(512, ge=1)
    # compute validation and test metrics over a seeded sample of this many users (every item is still ranked
    # for each of them; the sample is the same for every model with the same split seed); None = all users.
    # For data whose user x item score matrix is too large to score every epoch (MOOCCubeX: 97,722 x 3,321)
    eval_users: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _kg_files_together(self) -> "TopKConfig":
        if (self.kg_triples is None) != (self.kg_links is None):
            raise ValueError("topk.kg_triples and topk.kg_links go together: give both files or neither")
        if self.kg_triples is not None and not self.kg:
            raise ValueError("topk.kg=false contradicts topk.kg_triples / kg_links: drop one of them")
        self.kg_triples, self.kg_links = _absolute(self.kg_triples), _absolute(self.kg_links)
        return self


TOPK_RATIOS = (0.6, 0.2, 0.2)  # the WAA-TA paper's random 60/20/20 split, the default of top-K runs


def _move_legacy_topk_keys(raw: Any) -> Any:
    """Configs written before the one data path kept the top-K split and tasks under topk.*; they move to
    data.split / data.ratios / data.tasks (a run folder or bench of that time still loads). like_threshold is
    now the schema's derived `like` column: only its old default (4, = the built-in schema) is accepted."""
    if not isinstance(raw, dict) or not isinstance(raw.get("topk"), dict):
        return raw
    topk = dict(raw["topk"])
    moved = {k: topk.pop(k) for k in ("split", "ratios", "tasks") if k in topk}
    threshold = topk.pop("like_threshold", 4.0)
    if threshold != 4.0:
        raise ValueError(f"topk.like_threshold={threshold} is gone: top-K labels come from the schema; derive "
                         f"`like: \"rating >= {threshold}\"` in a schema file (data.schema_file)")
    if not moved:
        return {**raw, "topk": topk}
    data = dict(raw.get("data") or {})
    for key, value in moved.items():
        if key in data and data[key] != value:
            raise ValueError(f"topk.{key}={value!r} contradicts data.{key}={data[key]!r}: give data.{key} only")
        data[key] = value
    return {**raw, "data": data, "topk": topk}


def default_loss_reduction(model: str) -> str:
    """The loss form of a model's paper (its class's `default_loss_reduction`); "task" for unknown names (they
    fail later, naming the model)."""
    from polyrec.models.base import get_model_class

    try:
        return get_model_class(model).default_loss_reduction
    except PolyrecError:
        return "task"


class RunConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    topk: TopKConfig | None = None  # set: a top-K run (polyrec.topk) instead of a CTR-style run

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, raw: Any) -> Any:
        return _move_legacy_topk_keys(raw)

    @property
    def kind(self) -> str:
        """The run kind (polyrec.runs): "topk" with a topk section, else "ctr"."""
        return "ctr" if self.topk is None else "topk"

    @model_validator(mode="after")
    def _resolve_auto_balance(self) -> "RunConfig":
        if self.topk is not None and "ratios" not in self.data.model_fields_set:
            self.data.ratios = TOPK_RATIOS  # written resolved into config.yaml
        # CTR-style models have no balancer of their own: auto is sum, written as such in config.yaml.
        # Top-K runs keep "auto" and resolve it from the model (polyrec.topk.run).
        if self.topk is None and self.train.balance == "auto":
            self.train.balance = "sum"
        if self.train.loss_reduction == "auto":
            self.train.loss_reduction = "task" if self.topk is not None else default_loss_reduction(self.model.name)
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


_KNOWN = model_keys(RunConfig, DataConfig, ModelConfig, TrainConfig, TopKConfig, FilesConfig, JoinSpec)


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'section.key: old -> new' for every key two dumped configs disagree on (an unset section is {})."""
    old = {s: (v or {}) for s, v in old.items()}
    new = {s: (v or {}) for s, v in new.items()}
    return [f"{s}.{k}: {old.get(s, {}).get(k)!r} -> {new[s].get(k)!r}" for s in new
            for k in sorted(set(old.get(s, {})) | set(new[s])) if old.get(s, {}).get(k) != new[s].get(k)]


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply 'train.lr=0.01' (value parsed as YAML) to a nested dict, naming unknown sections."""
    if "=" not in assignment:
        raise PolyrecError(f"--set expects key=value, got {assignment!r}")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2:
        raise PolyrecError(
            f"--set key {key!r} must name a section and a key, e.g. train.lr=0.01 or model.n_experts=8"
        )
    if parts[0] not in RunConfig.model_fields:
        raise PolyrecError(
            f"Unknown config section {parts[0]!r} in --set {key}.{close_matches(parts[0], RunConfig.model_fields)}"
            f" Sections: {', '.join(RunConfig.model_fields)}."
        )
    try:
        set_dotted(raw, key.strip(), yaml.safe_load(value))
    except yaml.YAMLError:
        raise PolyrecError(f"--set {key}: the value {value!r} is not valid YAML") from None


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw['train']['lr'] = value for key 'train.lr' (the one dotted-key writer: --set, bench rows, tune trials).
    Intermediate sections are created; one that holds a plain value is replaced by a section."""
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> RunConfig:
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        loaded = read_yaml(path, "Config file") or {}
        if not isinstance(loaded, dict):
            raise PolyrecError(f"Config file {path} must hold a mapping with sections data/model/train.")
        raw = _merge(raw, loaded)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise PolyrecError(f"Invalid config: {format_validation_error(exc, _KNOWN)}") from None


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

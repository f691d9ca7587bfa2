"""What a benchmark runs: datasets x rows x seeds, resolved into one RunConfig per run.

Rows
  A row is a model with settings; its label is the text as written. Three ways to write one:

  * ``mmoe`` or ``mmoe[n_experts=8,expert_dims=[64,32]]``: a registered model, with model parameters in
    brackets (values are YAML; keys with a dot, ``mmoe[train.lr=0.01]``, are any config override);
  * a named variant from ``VARIANTS`` (``label -> (model, params)``), optionally with brackets too;
  * in an experiment YAML: ``{label: mmoe-8, model: mmoe, params: {...}, set: {model.n_experts: 8, train.lr: 0.002}}``,
    optionally with per-dataset overrides for this row only, ``dataset_set: {movielens-1m: {train.lr: 0.003}}``
    (e.g. a learning rate tuned per dataset and model); they apply after the row's ``set``.

  ``--optimizers sgd,adam[lr=0.003]`` multiplies the rows: row ``mmoe`` becomes ``mmoe/sgd`` and
  ``mmoe/adam[lr=0.003]`` with ``train.optimizer`` (and the bracketed ``train.*`` keys) set.

Experiment YAML (every key optional except datasets and rows, which the command line may give)::

    name: my-study
    datasets: [movielens-100k, movielens-1m]
    seeds: 5                 # seeds 0..4, or an explicit list [0, 1, 7]
    config: base.yaml        # a run config file (relative to this YAML), merged under `base`
    base: {data: {...}, model: {...}, train: {...}}
    set: {train.epochs: 5}   # or a list ["train.epochs=5"]
    dataset_set: {movielens-1m: {train.lr: 0.002}}
    rows: [mmoe, "ple[n_shared=2]", {label: mmoe-8, model: mmoe, set: {model.n_experts: 8}}]
    optimizers: [sgd, adam]
    lr_grid: [0.001, 0.003, 0.01]   # learning rate chosen per (dataset, row) on validation (polyrec.bench.lrgrid)
    lr_grid_extensions: 2           # a winner at an edge adds up to this many points beyond it, then fails
    lr_selection_seeds: 1           # the first N seeds choose the lr (mean validation monitor)
    allow_short_patience: false     # true: accept train.patience 1 or 2 (refused: it stops runs on noise)

  A row's own ``lr_grid:`` (or ``bench.lr_grid=[...]`` in its brackets) replaces the bench's; ``lr_grid: []``
  keeps the row's configured learning rate. On the command line the bench settings are
  ``--set bench.lr_grid=[0.001,0.003,0.01]`` and so on.

Convergence rules: every run of a bench gets ``train.patience`` 3 unless its config sets one; an explicit
patience of 1 or 2 is refused (``allow_short_patience`` overrides; 0 = never stop early is accepted: it cannot
stop a run early, and a row whose best epoch is its last is marked in the tables either way).

Precedence, lowest first: config files and ``base``; ``set`` and ``--set``; ``dataset_set`` of the run's
dataset; the row (model, params, set); the optimiser; ``train.seed`` = the seed. Model parameters from the
first three levels apply to a row only when its model has that parameter (so ``--set model.dropout=0.1``
reaches every model and ``--set model.n_experts=8`` only the expert models); an explicitly set parameter
that no row's model has is an error. ``data.split_seed`` is left unset, so the split follows the seed:
the same seed gives every row the same split and initialisation, which is what pairs the seeds.

Cross-validation (``--folds K`` or ``folds: K``): the runs are folds 0..K-1 instead of seeds (a run's seed is
its fold, which it tests; the table's mean ± std is over folds). Every run uses ``data.split=kfold`` with one
split seed (``data.split_seed``, default 0), so all rows and folds come from the same assignment; validation
for early stopping is a seeded ``data.ratios[1]`` share of the training folds (polyrec.data.split.kfold_split).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml

from polyrec.bench.lrgrid import lr_text
from polyrec.config import DataConfig, RunConfig, TrainConfig, load_config, set_dotted
from polyrec.errors import PolyrecError, close_matches
from polyrec.utils.io import read_yaml

# Named rows: label -> (model, params); a dotted key is a config setting of the row, e.g.
# "sapenet-no-attention": ("sapenet", {"attention": False}), "m3oe-pooled-loss": ("m3oe", {"train.loss_reduction": "task"}).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # the SAPENet paper's ablations (../shared/docs/specs/sapenet.md)
    "sapenet-no-attention": ("sapenet", {"attention": False}),
    "sapenet-mmoe": ("sapenet", {"extraction": "mmoe"}),
    # SAPENet and M3oE train with their papers' per-(scenario, task) loss by default; the pooled per-task mean
    "sapenet-pooled-loss": ("sapenet", {"train.loss_reduction": "task"}),
    "m3oe-pooled-loss": ("m3oe", {"train.loss_reduction": "task"}),
    # the WAA-TA paper's ablations (../shared/docs/specs/waa-ta.md); WAA-TA1 also trains with `sum`, not
    # MetaBalance: give it train.balance=sum in its row
    "waata-no-aux": ("waata", {"auxiliary": False}),
    "waata-no-decomposition": ("waata", {"decomposition": False}),
    "waata-no-orthogonal": ("waata", {"orthogonal": False}),
}

SECTIONS = ("data", "model", "train", "topk")
# bench-wide convergence settings: experiment keys, and `--set bench.KEY=VALUE` on the command line
BENCH_SETTINGS = ("lr_grid", "lr_grid_extensions", "lr_selection_seeds", "allow_short_patience")
EXPERIMENT_KEYS = ("name", "datasets", "seeds", "folds", "config", "base", "set", "dataset_set", "rows",
                   "optimizers", *BENCH_SETTINGS)
ROW_KEYS = ("label", "model", "params", "set", "dataset_set", "lr_grid")
MIN_PATIENCE = 3  # a bench run's default train.patience, and the smallest one accepted (0 aside)
DEFAULT_LR_EXTENSIONS = 2
_NAME = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[(.*)\])?\s*$", re.DOTALL)


# --- small parsers ------------------------------------------------------------------------------------
def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets, braces and quotes: 'a[x=1,y=[2,3]],b' -> ['a[x=1,y=[2,3]]', 'b']."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
            if depth < 0:
                raise PolyrecError(f"Unbalanced brackets in {text!r}.")
        elif ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if depth != 0 or quote:
        raise PolyrecError(f"Unbalanced brackets or quotes in {text!r}.")
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_bracket(text: str) -> tuple[str, dict[str, Any]]:
    """'fdn[orthogonal=false, n=2]' -> ('fdn', {'orthogonal': False, 'n': 2}); values parsed as YAML."""
    m = _NAME.match(text)
    if not m:
        raise PolyrecError(f"Cannot parse {text!r}: expected NAME or NAME[key=value,...], "
                           "e.g. mmoe[n_experts=8,dropout=0.1].")
    name, inner = m.group(1), m.group(2)
    params: dict[str, Any] = {}
    for item in split_top(inner or ""):
        if "=" not in item:
            raise PolyrecError(f"In {text!r}: {item!r} is not key=value.")
        key, value = (s.strip() for s in item.split("=", 1))
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise PolyrecError(f"In {text!r}: {key!r} is not a parameter name.")
        if key in params:
            raise PolyrecError(f"In {text!r}: {key!r} is given twice.")
        params[key] = parse_value(value)
    return name, params


def parse_seeds(value: Any) -> list[int]:
    """5 or '5' -> [0..4]; '0,3,7' or [0, 3, 7] -> that list."""
    if isinstance(value, bool):
        raise PolyrecError(f"seeds must be a count or a list of integers, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if "," in text:
            value = [parse_value(s) for s in split_top(text)]
        else:
            value = parse_value(text)
    if isinstance(value, int):
        if value < 1:
            raise PolyrecError(f"--seeds N needs N >= 1, got {value}.")
        return list(range(value))
    if isinstance(value, (list, tuple)) and value and all(isinstance(s, int) and not isinstance(s, bool)
                                                          for s in value):
        if len(set(value)) != len(value):
            raise PolyrecError(f"Seeds repeat in {list(value)}.")
        return [int(s) for s in value]
    raise PolyrecError(f"seeds must be a count N (seeds 0..N-1) or a list of integers, got {value!r}.")


def parse_assignments(items: Any, where: str) -> dict[str, Any]:
    """['train.lr=0.01', ...] or {'train.lr': 0.01} -> {'train.lr': 0.01} (later wins)."""
    if items is None:
        return {}
    if isinstance(items, dict):
        out = {str(k): v for k, v in items.items()}
    elif isinstance(items, (list, tuple)):
        out = {}
        for a in items:
            if not isinstance(a, str) or "=" not in a:
                raise PolyrecError(f"{where}: expected key=value, got {a!r}.")
            k, v = a.split("=", 1)
            out[k.strip()] = parse_value(v)
    else:
        raise PolyrecError(f"{where}: expected a mapping of key: value or a list of key=value, got {items!r}.")
    for key in out:
        check_key(key, where)
    return out


def parse_lr_grid(value: Any, where: str) -> list[float]:
    """A learning-rate grid: >= 2 distinct positive rates (YAML numbers, or text such as '1e-3', which YAML
    reads as a string), sorted ascending; [] or null: no grid. A grid is meant to be log-spaced (1e-3, 3e-3,
    1e-2): an edge winner extends it by the ratio of its two outermost points at that edge."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [parse_value(v) for v in split_top(value.strip().strip("[]"))]
    if not isinstance(value, (list, tuple)):
        raise PolyrecError(f"{where}: lr_grid must be a list of learning rates, e.g. [0.001, 0.003, 0.01]; "
                           f"got {value!r}.")
    rates: list[float] = []
    for v in value:
        try:
            rate = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            rate = math.nan
        if not (math.isfinite(rate) and rate > 0):
            raise PolyrecError(f"{where}: lr_grid holds {v!r}, which is not a positive learning rate.")
        rates.append(rate)
    if len({lr_text(r) for r in rates}) != len(rates):  # lr_text names the grid's run folders
        raise PolyrecError(f"{where}: lr_grid {list(value)} repeats a rate (to 6 significant digits).")
    if len(rates) == 1:
        raise PolyrecError(f"{where}: lr_grid {list(value)} has one rate: a grid needs >= 2 to bracket the best "
                           "(3 or more, log-spaced, is better); [] keeps the configured train.lr.")
    return sorted(rates)


def parse_count(value: Any, where: str, low: int) -> int:
    if isinstance(value, str):
        value = parse_value(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PolyrecError(f"{where} must be an integer >= {low}, got {value!r}.")
    return value


def parse_flag(value: Any, where: str) -> bool:
    if isinstance(value, str):
        value = parse_value(value)
    if not isinstance(value, bool):
        raise PolyrecError(f"{where} must be true or false, got {value!r}.")
    return value


def check_key(key: str, where: str) -> None:
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise PolyrecError(f"{where}: key {key!r} must name a section and a key, e.g. train.lr or model.n_experts.")
    if parts[0] == "bench":
        if len(parts) != 2 or parts[1] not in BENCH_SETTINGS:
            raise PolyrecError(f"{where}: unknown bench setting {key!r}.{close_matches(parts[-1], BENCH_SETTINGS)} "
                               f"Bench settings: {', '.join('bench.' + k for k in BENCH_SETTINGS)}.")
        return
    if parts[0] not in SECTIONS:
        raise PolyrecError(f"{where}: unknown config section {parts[0]!r} in {key!r}."
                           f"{close_matches(parts[0], SECTIONS)} Sections: {', '.join(SECTIONS)}.")
    fields = {"data": DataConfig.model_fields, "train": TrainConfig.model_fields}.get(parts[0])
    if fields is not None and parts[1] not in fields:
        raise PolyrecError(f"{where}: unknown key {key!r}.{close_matches(parts[1], fields)}")
    if key in ("train.seed", "data.dataset"):
        raise PolyrecError(f"{where}: {key} is set by the bench itself (--seeds / --dataset); leave it out.")


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def model_fields(model: str) -> dict[str, Any]:
    from polyrec.models.base import MODELS, get_model_class
    from polyrec.topk.models import TOPK_MODELS, topk_model_names

    topk_model_names()  # registers both zoos
    if model in TOPK_MODELS and model not in MODELS:  # top-K only (mf, kgat, waata)
        return dict(TOPK_MODELS[model].Params.model_fields)
    return dict(get_model_class(model).Params.model_fields)


def optimizer_names() -> tuple[str, ...]:
    return get_args(TrainConfig.model_fields["optimizer"].annotation)


def safe_name(label: str) -> str:
    """A folder name for a label: 'mmoe/adam' -> 'mmoe__adam', 'fdn[orthogonal=false]' -> 'fdn__orthogonal=false'."""
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "__", label).strip("_")
    if not slug or slug.startswith("."):
        slug = "row" + slug
    return slug[:120]


# --- rows ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)  # model parameters (checked by name)
    set: dict[str, Any] = field(default_factory=dict)  # other dotted overrides (data.*, train.*, model.embed_dim)
    optimizer: str | None = None  # set by --optimizers
    source: str | None = None  # the text as written
    dataset_set: dict[str, dict[str, Any]] = field(default_factory=dict)  # dataset -> overrides, this row only
    lr_grid: list[float] | None = None  # None: the bench's grid; []: no grid (the configured train.lr)

    @property
    def folder(self) -> str:
        return safe_name(self.label)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "model": self.model}
        if self.params:
            out["params"] = self.params
        if self.set:
            out["set"] = self.set
        if self.optimizer:
            out["optimizer"] = self.optimizer
        if self.dataset_set:
            out["dataset_set"] = self.dataset_set
        if self.lr_grid is not None:
            out["lr_grid"] = list(self.lr_grid)
        out["folder"] = self.folder
        return out


def _resolve_model(name: str, where: str) -> tuple[str, dict[str, Any]]:
    from polyrec.models.base import MODELS
    from polyrec.topk.models import TOPK_MODELS, topk_model_names

    if name in VARIANTS:
        model, params = VARIANTS[name]
        return model, dict(params)
    topk_model_names()  # registers both zoos
    if name not in MODELS and name not in TOPK_MODELS:
        choices = sorted(set(MODELS) | set(TOPK_MODELS) | set(VARIANTS))
        raise PolyrecError(f"{where}: unknown model or variant {name!r}.{close_matches(name, choices)} "
                           f"Available: {', '.join(choices)}.")
    return name, {}


def _split_params(params: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bracket/`params` keys: bare ones are model parameters, dotted ones are config overrides."""
    model_params, sets = {}, {}
    for k, v in params.items():
        if "." in k:
            sets[k] = v
        else:
            model_params[k] = v
    return model_params, sets


def make_row(label: str, model_text: str, params: dict[str, Any] | None = None,
             sets: dict[str, Any] | None = None, source: str | None = None) -> Row:
    where = f"row {label!r}"
    name, bracket = parse_bracket(model_text)
    model, variant = _resolve_model(name, where)
    base_params, base_sets = _split_params(variant, where)
    b_params, b_sets = _split_params(bracket, where)
    p_params, p_sets = _split_params(dict(params or {}), where)
    all_sets = {**base_sets, **b_sets, **p_sets, **parse_assignments(sets, where)}
    lr_grid = None
    for k in list(all_sets):
        check_key(k, where)
        if k == "bench.lr_grid":
            lr_grid = parse_lr_grid(all_sets.pop(k), where)
        elif k.startswith("bench."):
            raise PolyrecError(f"{where}: {k} is a setting of the whole bench; a row may set bench.lr_grid only.")
        if k.startswith("model."):
            sub = k.split(".", 1)[1]
            if sub == "name":
                raise PolyrecError(f"{where}: set the model with `model:`, not model.name.")
            if sub != "embed_dim":
                if "." in sub:
                    raise PolyrecError(f"{where}: {k!r} is not a model parameter name.")
                p_params[sub] = all_sets.pop(k)
    merged = {**base_params, **b_params, **p_params}
    fields = model_fields(model)
    for k in merged:
        if k not in fields:
            raise PolyrecError(f"{where}: unknown parameter {k!r} for model {model!r}.{close_matches(k, fields)} "
                               f"Parameters: {', '.join(fields)}.")
    return Row(label, model, merged, all_sets, None, source if source is not None else label, lr_grid=lr_grid)


def parse_row(item: Any) -> Row:
    """A row from '--models' text ('mmoe[n_experts=8]') or an experiment YAML entry (str or mapping)."""
    if isinstance(item, str):
        return make_row(item.strip(), item)
    if isinstance(item, dict):
        unknown = [k for k in item if k not in ROW_KEYS]
        if unknown:
            raise PolyrecError(f"Unknown key(s) {unknown} in row {item!r}.{close_matches(str(unknown[0]), ROW_KEYS)}"
                               f" Row keys: {', '.join(ROW_KEYS)}.")
        if "model" not in item:
            raise PolyrecError(f"Row {item!r} needs a `model:`.")
        model_text = str(item["model"])
        label = str(item.get("label") or model_text)
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise PolyrecError(f"row {label!r}: params must be a mapping.")
        row = make_row(label, model_text, params, item.get("set"), source=None)
        if "lr_grid" in item:
            row.lr_grid = parse_lr_grid(item["lr_grid"], f"row {label!r}")
        per_dataset = item.get("dataset_set") or {}
        if not isinstance(per_dataset, dict):
            raise PolyrecError(f"row {label!r}: dataset_set must map dataset names to overrides.")
        for ds, sets in per_dataset.items():
            parsed = parse_assignments(sets, f"row {label!r} dataset_set[{ds}]")
            for k in parsed:
                check_key(k, f"row {label!r} dataset_set[{ds}]")
                if k.startswith("model.") and k != "model.embed_dim" or k.startswith("bench."):
                    raise PolyrecError(f"row {label!r} dataset_set[{ds}]: set model parameters with `params:` "
                                       "and a row's lr grid with `lr_grid:`; dataset_set takes data.*, train.* "
                                       "and model.embed_dim.")
            row.dataset_set[str(ds)] = parsed
        return row
    raise PolyrecError(f"A row must be a model name or a mapping with label/model/params/set, got {item!r}.")


def parse_optimizer(text: str) -> tuple[str, dict[str, Any]]:
    """'sgd[lr=0.05,momentum=0.9]' -> ('sgd', {'train.lr': 0.05, 'train.momentum': 0.9})."""
    name, params = parse_bracket(str(text))
    names = optimizer_names()
    if name not in names:
        raise PolyrecError(f"Unknown optimizer {name!r}.{close_matches(name, names)} Available: {', '.join(names)}.")
    sets = {}
    for k, v in params.items():
        key = k if "." in k else f"train.{k}"
        check_key(key, f"optimizer {text!r}")
        sets[key] = v
    return name, sets


def expand_optimizers(rows: list[Row], optimizers: list[str]) -> list[Row]:
    if not optimizers:
        return rows
    out = []
    for row in rows:
        for text in optimizers:
            name, sets = parse_optimizer(text)
            out.append(Row(f"{row.label}/{text}", row.model, dict(row.params),
                           {**row.set, "train.optimizer": name, **sets}, name, row.source,
                           copy.deepcopy(row.dataset_set), copy.copy(row.lr_grid)))
    return out


# --- the experiment -----------------------------------------------------------------------------------
@dataclass
class Experiment:
    datasets: list[str]
    seeds: list[int]
    rows: list[Row]
    base: dict[str, Any] = field(default_factory=dict)  # config files + `base`, merged
    overrides: dict[str, Any] = field(default_factory=dict)  # `set` + --set
    dataset_set: dict[str, dict[str, Any]] = field(default_factory=dict)
    optimizers: list[str] = field(default_factory=list)
    name: str | None = None
    config_files: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lr_grid: list[float] = field(default_factory=list)  # the bench's grid; a row's own replaces it
    lr_grid_extensions: int = DEFAULT_LR_EXTENSIONS
    lr_selection_seeds: int = 1  # the first N seeds choose each row's lr
    allow_short_patience: bool = False
    folds: int | None = None  # cross-validation: the seeds are the folds 0..folds-1

    def grid_for(self, row: Row) -> list[float]:
        """The row's learning-rate grid ([]: no selection, its configured train.lr)."""
        return list(row.lr_grid if row.lr_grid is not None else self.lr_grid)

    @property
    def selection_seeds(self) -> list[int]:
        return self.seeds[: self.lr_selection_seeds]

    def config_for(self, dataset: str, row: Row, seed: int, lr: float | None = None) -> RunConfig:
        """The run's config; `lr` (a grid point or the chosen rate) overrides every other train.lr."""
        return load_config(base=self.raw_for(dataset, row, seed, lr))

    def raw_for(self, dataset: str, row: Row, seed: int, lr: float | None = None) -> dict[str, Any]:
        raw = copy.deepcopy(self.base)
        for k, v in self.overrides.items():
            set_dotted(raw, k, v)
        set_dotted(raw, "data.dataset", dataset)
        for k, v in self.dataset_set.get(dataset, {}).items():
            set_dotted(raw, k, v)
        model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
        fields = model_fields(row.model)
        kept = {k: v for k, v in model.items() if k in fields}
        raw["model"] = {"name": row.model, **({"embed_dim": model["embed_dim"]} if "embed_dim" in model else {}),
                        **kept, **copy.deepcopy(row.params)}
        for k, v in row.set.items():
            set_dotted(raw, k, v)
        for k, v in row.dataset_set.get(dataset, {}).items():
            set_dotted(raw, k, v)
        if lr is not None:
            set_dotted(raw, "train.lr", lr)
        if "patience" not in (raw.get("train") or {}):  # the bench's default, not polyrec train's 2
            set_dotted(raw, "train.patience", MIN_PATIENCE)
        set_dotted(raw, "train.seed", seed)
        if self.folds is not None:  # one fold assignment for every row and fold: the split seed is fixed
            set_dotted(raw, "data.split", "kfold")
            set_dotted(raw, "data.folds", self.folds)
            set_dotted(raw, "data.fold", seed)
            if (raw.get("data") or {}).get("split_seed") is None:
                set_dotted(raw, "data.split_seed", 0)
        return raw

    def dropped_params(self, dataset: str, row: Row) -> list[str]:
        """Shared model parameters (base/--set/dataset_set) that this row's model does not have."""
        raw = copy.deepcopy(self.base)
        for k, v in self.overrides.items():
            set_dotted(raw, k, v)
        for k, v in self.dataset_set.get(dataset, {}).items():
            set_dotted(raw, k, v)
        model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
        fields = model_fields(row.model)
        return [k for k in model if k not in ("name", "embed_dim") and k not in fields and k not in row.params]

    def validate(self) -> None:
        """Fail before any training on: unknown datasets, explicit model parameters no row's model has,
        duplicate labels or folders, and any config the schema rejects. (Parameter *values* are checked
        by each run, so one bad row becomes a failed run, not a failed bench.)"""
        from polyrec.data.prepare import get_recipe

        if not self.datasets:
            raise PolyrecError("No datasets: give --dataset NAME[,NAME] or `datasets:` in the experiment.")
        if not self.rows:
            raise PolyrecError("No rows: give --models a,b,c or `rows:` in the experiment.")
        for ds in self.datasets:
            get_recipe(ds)
        for ds in self.dataset_set:  # a dataset the bench does not run (e.g. --dataset narrowed it) is ignored
            if ds not in self.datasets:
                try:
                    get_recipe(ds)
                except PolyrecError as exc:
                    raise PolyrecError(f"dataset_set: {exc}") from None
        labels, folders = set(), {}
        for row in self.rows:
            if row.label in labels:
                raise PolyrecError(f"Row label {row.label!r} appears twice; give one of them another label.")
            labels.add(row.label)
            if row.folder in folders:
                raise PolyrecError(f"Rows {folders[row.folder]!r} and {row.label!r} would share the folder "
                                   f"{row.folder!r}; relabel one of them.")
            folders[row.folder] = row.label
        explicit = {k.split(".", 1)[1] for k in self.overrides if k.startswith("model.")}
        explicit |= {k.split(".", 1)[1] for d in self.dataset_set.values() for k in d if k.startswith("model.")}
        explicit -= {"embed_dim"}
        union: set[str] = set()
        for row in self.rows:
            union |= set(model_fields(row.model))
        for k in sorted(explicit):
            if k not in union:
                raise PolyrecError(f"model.{k} is a parameter of none of the rows' models "
                                   f"({', '.join(sorted({r.model for r in self.rows}))}).{close_matches(k, union)}")
        if self.folds is not None:
            note = (f"{self.folds}-fold cross-validation: the seed of a run is the fold it tests; one fold "
                    "assignment (data.split_seed) for every row.")
            if note not in self.notes:
                self.notes.append(note)
        elif "split_seed" in (self.base.get("data") or {}) and self.base["data"]["split_seed"] is not None \
                or self.overrides.get("data.split_seed") is not None:
            self.notes.append("data.split_seed is fixed: every seed uses the same split; seeds vary only the "
                              "initialisation and the shuffling.")
        if self.lr_selection_seeds > len(self.seeds):
            raise PolyrecError(f"lr_selection_seeds={self.lr_selection_seeds} but the bench has "
                               f"{len(self.seeds)} seed(s).")
        for ds in self.datasets:
            for row in self.rows:
                dropped = self.dropped_params(ds, row)
                if dropped:
                    note = (f"row {row.label!r}: {', '.join('model.' + k for k in dropped)} not applied "
                            f"({row.model} has no such parameter).")
                    if note not in self.notes:
                        self.notes.append(note)
                cfg = self.config_for(ds, row, self.seeds[0])  # schema errors now, not after hours of training
                self._check_convergence(ds, row, cfg)

    def _check_convergence(self, dataset: str, row: Row, cfg: RunConfig) -> None:
        """The bench's convergence rules, before any training: patience >= MIN_PATIENCE (or 0), and a row with
        an lr grid does not also fix its learning rate."""
        patience = cfg.train.patience
        if 0 < patience < MIN_PATIENCE and not self.allow_short_patience:
            raise PolyrecError(
                f"row {row.label!r} on {dataset}: train.patience={patience} stops runs on a noisy epoch before "
                f"they converge; a bench needs train.patience >= {MIN_PATIENCE} (0: never stop early), or "
                "allow_short_patience: true in the experiment (--set bench.allow_short_patience=true).")
        grid = self.grid_for(row)
        if grid:
            own = {**row.set, **row.dataset_set.get(dataset, {})}
            if "train.lr" in own:
                raise PolyrecError(
                    f"row {row.label!r} on {dataset}: sets train.lr={own['train.lr']} and has the lr grid "
                    f"{grid}; give the row `lr_grid: []` to keep its rate, or drop its train.lr.")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        out["command"] = list(self.command)
        out["datasets"] = list(self.datasets)
        out["seeds"] = list(self.seeds)
        if self.folds is not None:
            out["folds"] = self.folds
        if self.config_files:
            out["config_files"] = list(self.config_files)
        out["base"] = self.base
        if self.overrides:
            out["set"] = self.overrides
        if self.dataset_set:
            out["dataset_set"] = self.dataset_set
        if self.optimizers:
            out["optimizers"] = list(self.optimizers)
        # the rules this bench ran under; its presence also tells the aggregator to mark cap-bound rows
        out["convergence"] = {"min_patience": MIN_PATIENCE, "allow_short_patience": self.allow_short_patience,
                              "lr_grid": list(self.lr_grid), "lr_grid_extensions": self.lr_grid_extensions,
                              "lr_selection_seeds": self.selection_seeds}
        out["rows"] = [r.to_dict() for r in self.rows]
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _load_config_file(path: Path) -> dict[str, Any]:
    loaded = read_yaml(path, "Config file") or {}
    if not isinstance(loaded, dict):
        raise PolyrecError(f"Config file {path} must hold a mapping with sections data/model/train.")
    return loaded


def build_experiment(
    experiment: str | Path | None = None,
    datasets: str | None = None,
    models: str | None = None,
    seeds: str | int | None = None,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    optimizers: str | None = None,
    command: list[str] | None = None,
    default_seeds: int = 5,
    topk: bool = False,
    folds: int | None = None,
) -> Experiment:
    """The experiment from an optional YAML file and command-line options (which replace the YAML's
    datasets/rows/seeds/optimizers when given; --config is merged over the YAML's config and base, and
    --set over its `set`). `topk`: every run is a top-K run (as a `topk:` section in the base)."""
    spec: dict[str, Any] = {}
    yaml_dir = Path(".")
    if experiment is not None:
        path = Path(experiment)
        spec = read_yaml(path, "Experiment file") or {}
        if not isinstance(spec, dict):
            raise PolyrecError(f"Experiment file {path} must hold a mapping (datasets, seeds, rows, ...).")
        unknown = [k for k in spec if k not in EXPERIMENT_KEYS]
        if unknown:
            raise PolyrecError(f"Unknown key {unknown[0]!r} in experiment file {path}."
                               f"{close_matches(str(unknown[0]), EXPERIMENT_KEYS)} Keys: {', '.join(EXPERIMENT_KEYS)}.")
        yaml_dir = path.parent

    ds_value = datasets if datasets is not None else spec.get("datasets")
    if isinstance(ds_value, str):
        ds_list = split_top(ds_value)
    elif isinstance(ds_value, (list, tuple)):
        ds_list = [str(d) for d in ds_value]
    elif ds_value is None:
        ds_list = []
    else:
        raise PolyrecError(f"datasets must be a list of names, got {ds_value!r}.")

    if models is not None:
        rows = [parse_row(t) for t in split_top(models)]
    else:
        raw_rows = spec.get("rows") or []
        if not isinstance(raw_rows, list):
            raise PolyrecError("`rows:` must be a list of model names or {label, model, params, set} mappings.")
        rows = [parse_row(r) for r in raw_rows]

    n_folds = folds if folds is not None else spec.get("folds")
    if n_folds is not None:
        if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
            raise PolyrecError(f"--folds needs a number of folds >= 2, got {n_folds!r}.")
        if seeds is not None or spec.get("seeds") is not None:
            raise PolyrecError("--folds K runs the folds 0..K-1 in place of seeds; drop --seeds (or `seeds:`).")
        seed_list = list(range(n_folds))
    elif seeds is not None:
        seed_list = parse_seeds(seeds)
    elif spec.get("seeds") is not None:
        seed_list = parse_seeds(spec["seeds"])
    else:
        seed_list = list(range(default_seeds))

    opt_value = optimizers if optimizers is not None else spec.get("optimizers")
    if isinstance(opt_value, str):
        opt_list = split_top(opt_value)
    elif isinstance(opt_value, (list, tuple)):
        opt_list = [str(o) for o in opt_value]
    elif opt_value is None:
        opt_list = []
    else:
        raise PolyrecError(f"optimizers must be a list, got {opt_value!r}.")
    for o in opt_list:
        parse_optimizer(o)

    base: dict[str, Any] = {}
    files: list[str] = []
    if spec.get("config") is not None:
        p = Path(spec["config"])
        p = p if p.is_absolute() else yaml_dir / p
        base = _merge(base, _load_config_file(p))
        files.append(str(p))
    if spec.get("base") is not None:
        if not isinstance(spec["base"], dict):
            raise PolyrecError("`base:` must be a mapping with sections data/model/train.")
        base = _merge(base, spec["base"])
    if config is not None:
        base = _merge(base, _load_config_file(Path(config)))
        files.append(str(config))
    if topk:
        base.setdefault("topk", {})
    for k in base:
        if k not in SECTIONS:
            raise PolyrecError(f"Unknown config section {k!r} in the base config.{close_matches(str(k), SECTIONS)}")
    if isinstance(base.get("data"), dict):
        base["data"].pop("dataset", None)  # the bench's datasets decide
    if isinstance(base.get("train"), dict):
        base["train"].pop("seed", None)  # the bench's seeds decide
    if isinstance(base.get("model"), dict) and "name" in base["model"]:
        base["model"].pop("name")  # the rows decide

    sets = {**parse_assignments(spec.get("set"), "set"), **parse_assignments(list(overrides or []), "--set")}
    for k in list(sets):
        if k == "model.name":
            raise PolyrecError("--set model.name: the rows (--models) decide the model.")
    dataset_set_raw = spec.get("dataset_set") or {}
    if not isinstance(dataset_set_raw, dict):
        raise PolyrecError("`dataset_set:` must map dataset names to overrides.")
    dataset_set = {str(ds): parse_assignments(v, f"dataset_set[{ds}]") for ds, v in dataset_set_raw.items()}
    for ds, d in dataset_set.items():
        for k in d:
            if k.startswith("bench."):
                raise PolyrecError(f"dataset_set[{ds}]: {k} is a setting of the whole bench, not of a dataset.")
    settings = {k: spec[k] for k in BENCH_SETTINGS if k in spec}  # experiment keys, then set / --set bench.*
    settings.update({k.split(".", 1)[1]: sets.pop(k) for k in list(sets) if k.startswith("bench.")})

    exp = Experiment(
        datasets=ds_list, seeds=seed_list, rows=expand_optimizers(rows, opt_list), base=base, overrides=sets,
        dataset_set=dataset_set, optimizers=opt_list, name=spec.get("name"), config_files=files,
        command=list(command or []), folds=n_folds,
        lr_grid=parse_lr_grid(settings.get("lr_grid"), "lr_grid"),
        lr_grid_extensions=parse_count(settings.get("lr_grid_extensions", DEFAULT_LR_EXTENSIONS),
                                       "lr_grid_extensions", 0),
        lr_selection_seeds=parse_count(settings.get("lr_selection_seeds", 1), "lr_selection_seeds", 1),
        allow_short_patience=parse_flag(settings.get("allow_short_patience", False), "allow_short_patience"),
    )
    exp.validate()
    return exp

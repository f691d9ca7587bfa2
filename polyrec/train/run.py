"""CTR-style runs: encoded rows -> a multi-task model -> AUC/LogLoss per task, scenario and cell.

One of the two run kinds (polyrec.train.kind); `polyrec.runs` picks it for configs without a `topk` section.
Besides the common run files (see polyrec.train.kind), the folder holds encoders.json and schema.yaml (raw
values map exactly as in training, from any directory) and gates.json (mean gate weight per scenario, gate
and expert on test, for expert models).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyrec.balance import balancer_for_heads
from polyrec.config import RunConfig
from polyrec.data.batching import BlockTable, TensorTable
from polyrec.data.encoders import EncodedSplit, Encoders, HashedVocabulary
from polyrec.errors import PolyrecError
from polyrec.layers.sequence import resolve_sequence_encoders
from polyrec.models import build_model
from polyrec.models.base import MultiTaskModel, get_model_class, model_params
from polyrec.data.prepare import PreparedData, describe, prepare
from polyrec.train.device import split_storage
from polyrec.train.gates import gate_summary
from polyrec.train.kind import Built, RunKind
from polyrec.train.loaded import LoadedRun, load_run, rebuild_model  # noqa: F401  (re-exported: run folders' API)
from polyrec.train.warmstart import check_compatible, check_init_from, load_init_run, warm_start
from polyrec.train.trainer import Trainer, evaluate_table, table_evaluator
from polyrec.utils.io import atomic_write_text


class CTRKind(RunKind):
    """Rows of features -> per-task probabilities; validation by the configured monitor (default mean AUC)."""

    name = "ctr"
    warm_starts = True
    multi_process = True

    def validate_model(self, cfg: RunConfig) -> None:
        model_params(cfg.model.name, cfg.model.params())
        check_init_from(cfg)  # a bad --init-from folder or another model fails before any folder or data

    def prepare(self, cfg: RunConfig, download: bool, log: Callable[[str], None], evaluate_test: bool) -> Any:
        base = None
        if cfg.train.init_from is not None:  # continual re-training: the old run's encoders, grown
            old = load_init_run(cfg.train.init_from)
            check_compatible(old.config, cfg, old.run_dir)
            base = old.encoders
        data = prepare(cfg.data, seed=cfg.train.seed, download=download, log=log, base_encoders=base)
        log(describe(data))
        kept = {k: v for k, v in data.splits.items() if evaluate_test or k != "test"}
        if data.meta.get("chunked"):  # larger than memory: batches read from the memory maps
            return data, {k: chunked_table(v, cfg) for k, v in kept.items()}
        nbytes = sum(a.nbytes for v in kept.values()
                     for a in (v.categorical, v.numeric, v.scenario, v.labels, *v.sequences.values()))
        storage, pin = split_storage(cfg.train.device, cfg.train.split_on_device, nbytes)
        if storage != cfg.train.device:
            log(f"splits ({nbytes / 2**20:,.0f} MiB) stay in pinned host memory, copied to {cfg.train.device} per batch")
        tables = {k: TensorTable(v, storage, deliver_to=cfg.train.device, pin=pin) for k, v in kept.items()}
        return data, tables

    def build(self, cfg: RunConfig, data: Any, run_dir: Path, log: Callable[[str], None]) -> Built:
        prepared, tables = data
        model = model_for(cfg, prepared)
        spec = model.spec
        warm = warm_start(model, cfg.train.init_from, log) if cfg.train.init_from is not None else None
        balancer = balancer_for_heads(cfg.train.balance, model.heads, cfg.train.balance_params)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"model {cfg.model.name}: {n_params:,} parameters; heads {[h.name for h in model.heads]}")
        enc = prepared.encoders
        # oov_dropout trains the OOV row of stored vocabularies; a hashed field has none (its id 1 means null)
        oov_columns = [name in enc.vocabularies and not isinstance(enc.vocabularies[name], HashedVocabulary)
                       for name in enc.categorical_fields]
        evaluate = table_evaluator(model, tables["val"], cfg.train.eval_batch_size, spec.scenario_names,
                                   cfg.train.precision)
        trainer = Trainer(model, cfg.train, balancer, evaluate, run_dir, log, oov_columns=oov_columns)
        return Built(model, trainer, tables["train"], cfg.train, {
            "kind": self.name, "model": cfg.model.name, "embed_dim": cfg.model.embed_dim, "params": cfg.model.params(),
            "spec": spec.to_dict(), "heads": [h.__dict__ for h in model.heads],
            "dataset": prepared.dataset, "cache_entry": prepared.entry.name}, enc, n_params,
            model.params.model_dump(mode="json"),
            {"data_stats": prepared.meta.get("stats"), **({"warm_start": warm} if warm else {})})

    def evaluate(self, cfg: RunConfig, built: Built, data: Any, splits: tuple[str, ...]) -> dict[str, Any]:
        prepared, tables = data
        names = built.model.spec.scenario_names
        return {s: evaluate_table(built.model, tables[s], cfg.train.eval_batch_size, names, cfg.train.precision)
                for s in splits}

    def describe(self, data: Any) -> tuple[str, Any, list[str]]:
        prepared, _ = data
        return prepared.dataset, prepared.meta["rows"], prepared.meta["notes"]

    def after_fit(self, cfg: RunConfig, built: Built, data: Any, run_dir: Path) -> None:
        _, tables = data
        if "test" in tables:
            gates = gate_summary(built.model, tables["test"], built.model.spec.scenario_names,
                                 cfg.train.eval_batch_size, cfg.train.precision)
            if gates:
                atomic_write_text(run_dir / "gates.json", json.dumps(gates))

    def load(self, run_dir: Path, log: Callable[[str], None] = print) -> "LoadedRun":
        return load_run(run_dir)

    def evaluate_folder(self, run_dir: Path, split: str, log: Callable[[str], None]) -> dict[str, Any]:
        run = load_run(run_dir)
        base = None
        if run.config.train.init_from is not None:  # a warm-started run encodes with its old run's grown encoders
            source = Path(run.config.train.init_from) / "encoders.json"
            if not source.exists():
                raise PolyrecError(f"{run_dir} was warm-started from {source.parent}, whose encoders.json is gone: "
                                   "its data cannot be re-encoded as in training (predict still works).")
            base = Encoders.load(source)
        data: PreparedData = prepare(run.config.data, seed=run.config.train.seed, download=False, log=log,
                                     base_encoders=base)
        if split not in data.splits:
            raise PolyrecError(f"Unknown split {split!r}; available: {sorted(data.splits)}")
        if data.encoders.to_dict() != run.encoders.to_dict():
            raise PolyrecError("The dataset now encodes differently from when this run was trained "
                               "(source files or schema changed); evaluate would be meaningless.")
        table = (chunked_table(data.splits[split], run.config) if data.meta.get("chunked")
                 else TensorTable(data.splits[split]))
        return evaluate_table(run.model, table, run.config.train.eval_batch_size, run.spec.scenario_names)


def chunked_table(split: EncodedSplit, cfg: RunConfig) -> BlockTable:
    return BlockTable(split, cfg.data.block_rows, cfg.data.shuffle_window_rows, deliver_to=cfg.train.device)


def model_for(cfg: RunConfig, prepared: PreparedData) -> MultiTaskModel:
    """The freshly initialised model of a CTR-style run on `prepared` (its spec completed from the training split
    only), on cfg.train.device."""
    train = prepared.splits["train"]
    spec = get_model_class(cfg.model.name).spec_from_training(
        prepared.model_spec(), model_params(cfg.model.name, cfg.model.params()), train.categorical, train.labels)
    spec.sequence_encoders = resolve_sequence_encoders(cfg.model.sequence_encoder, cfg.model.sequences,
                                                       spec.sequence_fields, list(spec.sequence_sides))
    return build_model(cfg.model.name, spec, cfg.model.embed_dim, cfg.model.params()).to(cfg.train.device)

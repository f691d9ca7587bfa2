"""The `polyrec` command line."""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from polyrec.errors import PolyrecError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Multi-task, multi-scenario recommendation: train, evaluate, predict.")
models_app = typer.Typer(no_args_is_help=True, help="Model zoo.")
datasets_app = typer.Typer(no_args_is_help=True, help="Dataset recipes.")
app.add_typer(models_app, name="models")
app.add_typer(datasets_app, name="datasets")
schema_app = typer.Typer(no_args_is_help=True, help="Schemas for your own data.")
data_app = typer.Typer(no_args_is_help=True, help="Your own data: checks before training.")
app.add_typer(schema_app, name="schema")
app.add_typer(data_app, name="data")
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """Rows: every (scenario, head) cell, then each head over all scenarios, then the warm / cold-user /
    cold-item slices (when some test row is cold), then overall."""
    table = Table(title=title, title_justify="left")
    kinds = {h: ("auc" in m) for h, m in metrics["heads"].items()}
    for col in ("scenario", "head", "n", "pos", "AUC / RMSE", "LogLoss / MAE", "gAUC"):
        table.add_column(col, justify="left" if col in ("scenario", "head") else "right")

    def row(sc: str, head: str, m: dict[str, Any], style: str | None = None) -> None:
        binary = kinds[head]
        table.add_row(sc, head, _fmt(m["n"]), _fmt(m.get("positives", "")),
                      _fmt(m["auc"] if binary else m["rmse"]), _fmt(m["logloss"] if binary else m["mae"]),
                      _fmt(m.get("gauc", "")), style=style)

    cells = metrics["cells"]
    if list(cells) != ["all"]:  # data without scenarios: the single cell repeats the per-head rows
        for sc, cell in cells.items():
            for head, m in cell.items():
                row(sc, head, m)
    for head, m in metrics["heads"].items():
        row("all", head, m, style="bold")
    slices = metrics.get("slices") or {}
    if any(m["n"] for name, per in slices.items() if name != "warm" for m in per.values()):
        for name, per in slices.items():  # warm / cold-user / cold-item rows (unseen in training)
            for head, m in per.items():
                if m["n"]:
                    row(name.replace("_", "-"), head, m, style="italic")
                else:
                    table.add_row(name.replace("_", "-"), head, "0", "", "", "", "", style="italic")
    if metrics.get("overall"):
        o = metrics["overall"]
        table.add_row("all", "overall (pooled)", "", "", _fmt(o["auc"]), _fmt(o["logloss"]), "", style="bold")
        table.add_row("all", "mean of heads", "", "", _fmt(o["mean_auc"]), "", "", style="bold")
    return table


def topk_table(metrics: dict[str, Any], title: str) -> Table:
    """One row per (task, K): Recall, NDCG, HitRate, MRR (items ranked by the target task's score)."""
    table = Table(title=title, title_justify="left")
    for col in ("task", "users", "K", "Recall", "NDCG", "HitRate", "MRR"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, m in metrics["heads"].items():
        ks = sorted({int(k.split("@")[1]) for k in m if "@" in k})
        for k in ks:
            table.add_row(task, str(int(m.get("users", 0))), str(k),
                          *[_fmt(m[f"{name}@{k}"]) for name in ("recall", "ndcg", "hit", "mrr")])
    return table


def _progress_factory(enabled: bool):
    if not enabled or not console.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    def factory(total: int):
        prog = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=console, transient=True)
        prog.start()
        task = prog.add_task("train", total=total, info="")

        def update(done: int | None, loss: float | None, sps: float | None) -> None:
            if done is None:
                prog.stop()
                return
            prog.update(task, completed=done, info=f"loss {loss:.4f}  {sps:,.0f} samples/s")

        return update

    return factory


DATA_HELP = ("Your own data: a CSV/TSV/Parquet/JSON-lines file (gzip/zstd ok), a Parquet shard folder or a glob; "
             "needs --schema. Same as data.files.")


def data_overrides(data: str | None, val: str | None, test: str | None, schema: str | None) -> list[str]:
    """--data/--val/--test/--schema as `--set` assignments (values JSON-quoted, so any path survives YAML)."""
    out = []
    if (val is None) != (test is None):
        raise PolyrecError("--val and --test go together (an official split); give both or neither.")
    if val is not None and data is None:
        raise PolyrecError("--val/--test need --data (the training file).")
    if data is not None:
        out.append(f"data.files.{'train' if val is not None else 'path'}={json.dumps(data)}")
        if val is not None:
            out += [f"data.files.val={json.dumps(val)}", f"data.files.test={json.dumps(test)}"]
    if schema is not None:
        out.append(f"data.schema_file={json.dumps(schema)}")
    return out


@app.command()
def train(
    dataset: Annotated[Optional[str], typer.Option(help="Dataset recipe (see `polyrec datasets list`).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model name (see `polyrec models list`).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML config with data/model/train sections.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override, e.g. --set train.lr=0.01")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Shortcut for --set train.epochs=N.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Shortcut for --set train.seed=N.")] = None,
    balance: Annotated[Optional[str], typer.Option(help="Task balancer: sum, fixed, uncertainty, gradnorm, dwa, pcgrad, metabalance (default auto: the model's own, else sum).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/DATASET-MODEL-TIME).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    topk: Annotated[bool, typer.Option("--topk", help="Top-K run: rank all items per user, Recall/NDCG@K "
                                       "(same as a `topk:` config section; models mf, kgat, waata, or any "
                                       "multi-task model).")] = False,
    data: Annotated[Optional[str], typer.Option("--data", help=DATA_HELP)] = None,
    val: Annotated[Optional[str], typer.Option("--val", help="Validation file (with --test: an official split).")] = None,
    test: Annotated[Optional[str], typer.Option("--test", help="Test file (with --val).")] = None,
    schema: Annotated[Optional[str], typer.Option("--schema", help="Schema YAML (data.schema_file).")] = None,
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", help="Continual re-training: warm-start from this finished CTR-style run (its vocabularies "
        "grown by the new data, its weights copied; without --config its model and train settings, and its data "
        "unless --data/--dataset is given). Same as train.init_from.")] = None,
) -> None:
    """Train a model and print per-(scenario, task) metrics on the test split (top-K metrics with --topk).

    Your own data: polyrec train --data events.csv --schema schema.yaml [--val v.csv --test t.csv]."""
    from polyrec.config import load_config
    from polyrec.runs import train_run
    from polyrec.train.distributed import env_world

    if resume:
        if out is None:
            raise PolyrecError("--resume needs --out RUN_DIR (the run to continue).")
        if init_from is not None:
            raise PolyrecError("--resume continues the run in --out as its config.yaml says (train.init_from "
                               "included): drop --init-from.")
        if (out / "config.yaml").exists():
            cfg = load_config(out / "config.yaml")
        else:
            raise PolyrecError(f"Cannot resume: {out / 'config.yaml'} does not exist.")
    else:
        overrides = data_overrides(data, val, test, schema) + list(set_ or [])
        for key, value in (("data.dataset", dataset), ("model.name", model), ("train.epochs", epochs),
                           ("train.seed", seed), ("train.balance", balance)):
            if value is not None:
                overrides.append(f"{key}={value}")
        base: dict | None = {"topk": {}} if topk else None
        if init_from is not None:
            from polyrec.train.warmstart import init_config_base

            if config is None:
                base = {**(base or {}), **init_config_base(init_from, data is not None or dataset is not None,
                                                           schema is not None or data is None)}
            overrides.append(f"train.init_from={json.dumps(str(init_from))}")
        cfg = load_config(config, overrides, base=base)
        from polyrec.runs import validate_config

        validate_config(cfg)  # fail fast on unknown names, before any data work
        if out is None:
            if env_world().active:  # each process would stamp its own folder name
                raise PolyrecError("Multi-process training (torchrun) needs --out RUN_DIR, the one folder all "
                                   "processes share.")
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            name = cfg.data.dataset if cfg.data.files is None else Path(cfg.data.files.main).stem.split(".")[0]
            out = Path("runs") / f"{name}-{cfg.model.name}-{stamp}"
    say = console.print if env_world().is_main else (lambda *a, **k: None)  # torchrun: process 0 speaks
    say(f"run folder: {out}")
    result = train_run(cfg, out, resume=resume, log=console.print,
                       progress_factory=_progress_factory(cfg.train.progress and not quiet))
    m = result.metrics
    say(f"best epoch {m['best_epoch']} of {m['epochs_run']} (val {m['monitor']} = {m['best_val_monitor']:.4f})")
    table = topk_table if cfg.kind == "topk" else metrics_table
    say(table(m["test"], f"{m['dataset']} / {m['model']}: test metrics"))
    say(f"saved: {out}/metrics.json, {out}/model.safetensors")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    json_out: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
) -> None:
    """Re-evaluate a trained run on a split of its dataset."""
    from polyrec.runs import evaluate_run, kind_of_folder

    metrics = evaluate_run(run_dir, split, log=err_console.print)
    if json_out:
        console.print_json(json.dumps(metrics))
    else:
        table = topk_table if kind_of_folder(run_dir).name == "topk" else metrics_table
        console.print(table(metrics, f"{run_dir}: {split} metrics"))


@app.command()
def recommend(
    run_dir: Annotated[Path, typer.Argument(help="A finished top-K run folder (polyrec train --topk).")],
    user: Annotated[str, typer.Option("--user", help="Raw user id, as in the dataset.")],
    k: Annotated[int, typer.Option("--k", help="How many items.")] = 20,
    keep_test: Annotated[bool, typer.Option(
        "--keep-test", help="Leave the user's test-split items in the ranking (as the test metrics do).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """Top-K items for a user, never one they have already rated."""
    from polyrec.topk.run import load_topk_run, recommend as recommend_items

    run = load_topk_run(run_dir, log=err_console.print)
    items = recommend_items(run, user, k, keep_test=keep_test)
    if json_out:
        console.print_json(json.dumps(items))
        return
    table = Table("rank", "item", "title", "score", title=f"top {len(items)} for user {user} "
                  f"({run.config.model.name}, ranked by {run.data.target})", title_justify="left")
    for it in items:
        table.add_row(str(it["rank"]), str(it["item_id"]), it["title"], f"{it['score']:.4f}")
    console.print(table)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    input: Annotated[Path, typer.Option("--input", help="Rows to score: .parquet (file or shard folder), .csv, "
                                        ".tsv or .jsonl (gzip/zstd ok).")],
    output: Annotated[Path, typer.Option("--output", help="Output .parquet, .csv, .tsv or .jsonl: one score "
                                         "column per head.")],
    keep_columns: Annotated[Optional[str], typer.Option(
        "--keep-columns", help="Input columns copied in front of the scores, e.g. user_id,item_id.")] = None,
    delimiter: Annotated[Optional[str], typer.Option(help="Delimiter of a text input (default: as in training).")] = None,
) -> None:
    """Score new rows with a trained run (encoders and weights from the run folder)."""
    from polyrec.serve.predict import predict_file
    from polyrec.train.rundir import check_output_file

    keep = [c.strip() for c in keep_columns.split(",") if c.strip()] if keep_columns else None
    check_output_file(output, "--output file")  # before any row is scored
    n = predict_file(run_dir, input, output, keep_columns=keep, delimiter=delimiter)
    console.print(f"wrote {n} rows to {output}")


@schema_app.command("infer")
def schema_infer(
    path: Annotated[str, typer.Argument(help="A data file, shard folder or glob.")],
    delimiter: Annotated[Optional[str], typer.Option(help="Delimiter of a text file (default from the suffix).")] = None,
    no_header: Annotated[bool, typer.Option("--no-header", help="The file has no header line (needs --columns).")] = False,
    columns: Annotated[Optional[str], typer.Option(help="Column names, comma-separated.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the draft here instead of printing it.")] = None,
) -> None:
    """Print a commented draft schema (roles guessed from types and cardinalities) for you to edit."""
    from polyrec.data.infer import draft_schema
    from polyrec.data.sources import ReadOptions, read_source

    opts = ReadOptions(delimiter=delimiter, header=not no_header,
                       columns=[c.strip() for c in columns.split(",")] if columns else None)
    text = draft_schema(read_source(path, opts), path)
    if out is None:
        typer.echo(text, nl=False)
    else:
        from polyrec.utils.io import atomic_write_text

        atomic_write_text(out, text)
        console.print(f"wrote {out}")


@data_app.command("check")
def data_check(
    data: Annotated[Optional[str], typer.Option("--data", help=DATA_HELP)] = None,
    val: Annotated[Optional[str], typer.Option("--val", help="Validation file (with --test).")] = None,
    test: Annotated[Optional[str], typer.Option("--test", help="Test file (with --val).")] = None,
    schema: Annotated[Optional[str], typer.Option("--schema", help="Schema YAML.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML config (its data section is checked).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override, e.g. --set data.split=temporal")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Validate your data through the prepare path (read, derive, split, fit) and print per-column stats."""
    from polyrec.config import load_config
    from polyrec.data.check import check_data

    cfg = load_config(config, data_overrides(data, val, test, schema) + list(set_ or []))
    report = check_data(cfg.data, seed=cfg.train.seed, log=err_console.print)
    if json_out:
        console.print_json(json.dumps(report))
        return
    console.print(f"{report['source']}: {json.dumps(report['rows'])} rows ({report['split']} split)")
    for n in report["notes"]:
        console.print(f"  note: {n}")
    table = Table("column", "role", "type", "nulls", "distinct (train)", "val OOV", "test OOV",
                  title="columns", title_justify="left")
    for c in report["columns"]:
        table.add_row(c["column"], c["role"], c["type"], str(c["nulls"]), str(c["distinct"]),
                      *(f"{100 * c[k]:.1f}%" if k in c else "" for k in ("val_oov", "test_oov")))
    console.print(table)
    if report["histories"]:
        hist = Table("sequence", "split", "max_len", "mean length", "empty", "OOV tokens", title="histories",
                     title_justify="left")
        for h in report["histories"]:
            hist.add_row(h["sequence"], h["split"], str(h["max_len"]), f"{h['mean_length']:.2f}",
                         f"{100 * h['empty']:.1f}%", f"{100 * h['oov']:.1f}%")
        console.print(hist)
    tasks = [c["column"] for c in report["columns"] if c["role"].startswith("task")]
    rates = Table("split", "scenario", "rows", *tasks, title="label rate per scenario", title_justify="left")
    for split, per in report["label_rates"].items():
        for sc, r in per.items():
            rates.add_row(split, sc, str(r["rows"]), *(f"{r[t]:.4f}" for t in r if t != "rows"))
    console.print(rates)
    for w in report["warnings"]:
        err_console.print(f"warning: {w}")
    console.print("ok: the data encodes; train with the same --data/--schema.")


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to create (must not exist).")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Also export model.onnx, checked against torch.")] = False,
    rows: Annotated[Optional[Path], typer.Option(help="Rows for the ONNX check (.parquet/.csv/.tsv; default: "
                                                      "the run's test split).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Served model name (default: the --out folder name).")] = None,
    fusion: Annotated[str, typer.Option(help="Default /rank fusion: product or sum.")] = "product",
    weights: Annotated[Optional[str], typer.Option(help="Default fusion weights, e.g. click=1,like=0.5.")] = None,
) -> None:
    """Export a trained run as a self-contained serving bundle (weights, encoders, spec, metrics[, ONNX])."""
    from polyrec.serve.cli import export_command

    export_command(run_dir, out, onnx, rows, name, fusion, weights, console.print)


@app.command("serve")
def serve_cmd(
    bundles: Annotated[list[Path], typer.Argument(help="One or more bundle folders (polyrec export).")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    backend: Annotated[str, typer.Option(help="torch or onnx.")] = "torch",
    threads: Annotated[Optional[int], typer.Option(help="Threads per worker for the forward pass.")] = None,
    max_rows: Annotated[int, typer.Option(help="Most rows/candidates per request (more: 413).")] = 10_000,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body in MiB (more: 413).")] = 32.0,
) -> None:
    """Serve bundles over HTTP: /v1/models/NAME/score, /v1/models/NAME/rank, /v1/models, /health."""
    from polyrec.serve.app import serve

    serve([str(b) for b in bundles], host, port, workers, backend, threads, max_rows, int(max_body_mb * 2**20))


@models_app.command("list")
def models_list() -> None:
    """Registered models and their hyper-parameters."""
    from polyrec.models import MODELS

    from polyrec.topk.models import TOPK_MODELS, topk_model_names

    topk_model_names()  # registers the top-K models
    table = Table("model", "kind", "summary", "loss (auto)", "parameters (defaults)")
    for kind, registry in (("ctr + top-K", MODELS), ("top-K only", TOPK_MODELS)):
        for name, cls in sorted(registry.items()):
            doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
            params = ", ".join(f"{k}={v.default}" for k, v in cls.Params.model_fields.items())
            loss = getattr(cls, "default_loss_reduction", "task") if kind != "top-K only" else "task"
            table.add_row(name, kind, doc, loss, params)
    console.print(table)


@datasets_app.command("list")
def datasets_list() -> None:
    """Dataset recipes and whether their files are present in the data directory."""
    from polyrec.recipes import RECIPES
    from polyrec.settings import data_dir

    table = Table("dataset", "description", "files")
    for name, recipe in sorted(RECIPES.items()):
        if name == "files":  # your own files: polyrec train --data PATH --schema S.yaml
            table.add_row(name, recipe.description, "your paths")
            continue
        try:
            recipe.locate(data_dir())
            status = "present"
        except PolyrecError:
            status = "missing (prepare downloads)" if recipe.auto_download else "missing (manual download)"
        table.add_row(name, recipe.description, status)
    console.print(f"data directory: {data_dir()} (set POLYREC_DATA to change)")
    console.print(table)


@datasets_app.command("prepare")
def datasets_prepare(
    name: Annotated[str, typer.Argument(help="Dataset recipe name.")],
    seed: Annotated[int, typer.Option(help="Split seed.")] = 42,
    split: Annotated[Optional[str], typer.Option(
        help="random, temporal, global_temporal, leave_last_out or official.")] = None,
) -> None:
    """Download (if needed), split, encode and cache a dataset; print where the splits are."""
    from polyrec.config import DataConfig
    from polyrec.data.prepare import describe, prepare

    try:
        cfg = DataConfig(dataset=name, split=split)
    except Exception as exc:  # pydantic validation of --split
        raise PolyrecError(f"Invalid --split {split!r}: use random, temporal, global_temporal, leave_last_out "
                           "or official.") from exc
    data = prepare(cfg, seed=seed, log=console.print)
    console.print(describe(data))
    for s in data.splits:
        console.print(f"  {s}: {data.raw_split_path(s)}")


@datasets_app.command("synth")
def datasets_synth(
    rows: Annotated[int, typer.Option(help="Rows of the log.")],
    out: Annotated[Path, typer.Option(help="New folder for the shards, schema.yaml and synth.json.")],
    users: Annotated[int, typer.Option(help="Distinct user ids (Zipf-distributed).")] = 10_000,
    items: Annotated[int, typer.Option(help="Distinct item ids (Zipf-distributed).")] = 50_000,
    scenarios: Annotated[int, typer.Option(help="Scenarios s0, s1, ...")] = 3,
    tasks: Annotated[int, typer.Option(help="Binary tasks task0 (a click), task1, ... (nested in task0).")] = 2,
    seed: Annotated[int, typer.Option(help="Seed: the same arguments give the same data.")] = 0,
    chunk_rows: Annotated[int, typer.Option(help="Rows per chunk and Parquet shard (memory is flat in --rows; "
                                            "the data do not depend on it).")] = 1_000_000,
) -> None:
    """Write a synthetic multi-scenario, multi-task log with a planted signal (its Bayes AUC per task is known).

    Then: polyrec train --data OUT --schema OUT/schema.yaml --model mmoe."""
    from polyrec.data.synth import synthesize

    info = synthesize(out, rows=rows, users=users, items=items, scenarios=scenarios, tasks=tasks, seed=seed,
                      chunk_rows=chunk_rows, log=console.print)
    console.print(f"wrote {out}: {rows} rows in {info['shards']} Parquet shard(s), schema.yaml, synth.json "
                  f"({info['seconds']:.1f} s)")
    console.print("positive rate: " + ", ".join(f"{k} {v:.4f}" for k, v in info["positive_rate"].items()))
    console.print("planted (Bayes) AUC: " + ", ".join(
        f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in info["bayes_auc"].items()))
    console.print(f"train: polyrec train --data {out} --schema {out / 'schema.yaml'} --model mmoe")


@app.command()
def tune(
    trials: Annotated[int, typer.Option(help="Complete + pruned trials the study should hold (resumes count).")],
    dataset: Annotated[Optional[str], typer.Option(help="Dataset recipe (see `polyrec datasets list`).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model name (see `polyrec models list`).")] = None,
    config: Annotated[Optional[Path], typer.Option(
        help="Base YAML config; searched keys in it are replaced (pin them with --set).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Base-config override; a searched key given here is pinned (not searched).")] = None,
    study_dir: Annotated[Optional[Path], typer.Option(help="Study folder (default studies/DATASET-MODEL).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Start no new trial after this many seconds.")] = None,
) -> None:
    """Search hyper-parameters with Optuna on the validation split; resumable; writes best.yaml for `train`."""
    from polyrec.config import load_config
    from polyrec.runs import validate_config
    from polyrec.tune import tune as run_study

    overrides = list(set_ or [])
    fixed = [a.split("=", 1)[0].strip() for a in overrides]
    for key, value in (("data.dataset", dataset), ("model.name", model)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(config, overrides)
    validate_config(cfg)
    if study_dir is None:
        study_dir = Path("studies") / f"{cfg.data.dataset}-{cfg.model.name}"
    try:
        result = run_study(cfg, trials, study_dir, fixed=fixed, timeout=timeout,
                           log=lambda msg: console.print(msg, markup=False))
    except KeyboardInterrupt:
        err_console.print(f"interrupted; the study in {study_dir} keeps every finished trial "
                          "(run the same command to go on).")
        sys.exit(130)
    keys = [k for k in dict.fromkeys(k for t in result.trials for k in t.overrides)]
    table = Table(title=f"study {result.study_name} ({result.direction} val {result.monitor})", title_justify="left")
    for col in ("trial", "state", "value", "epochs", *(k.split(".", 1)[1] for k in keys)):
        table.add_column(col, justify="left" if col == "state" else "right")

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if v >= 0.01 or v == 0 else f"{v:.2e}"
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)

    best_number = result.best.number if result.best else None
    for t in result.trials:
        table.add_row(str(t.number), t.state.lower() + (f" ({t.error[:40]})" if t.error else ""),
                      "" if t.value is None else _fmt(float(t.value)), str(t.epochs or ""),
                      *(cell(t.overrides[k]) if k in t.overrides else "" for k in keys),
                      style="bold" if t.number == best_number else None)
    console.print(table)
    if result.best is None:
        console.print("no complete trial yet: no best.yaml")
        return
    console.print(f"best: trial {result.best.number}, val {result.monitor} = {result.best.value:.4f}")
    console.print(f"saved: {result.best_path}  (retrain: polyrec train --config {result.best_path})")


@app.command()
def bench(
    dataset: Annotated[Optional[str], typer.Option(help="Dataset(s), comma-separated, e.g. movielens-100k,movielens-1m.")] = None,
    models: Annotated[Optional[str], typer.Option(
        help="Rows, comma-separated: model names, named variants, or model\\[key=value,...] (an ablation row), "
             "e.g. mmoe,ple,mmoe\\[n_experts=8].")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="N (seeds 0..N-1; default 5) or a comma list, e.g. 0,3,7.")] = None,
    folds: Annotated[Optional[int], typer.Option(help="K-fold cross-validation in place of seeds: K runs per row "
                                                    "and dataset, fold k tests (data.split=kfold).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Base run config (YAML with data/model/train sections).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override for every run, e.g. --set train.epochs=5")] = None,
    optimizers: Annotated[Optional[str], typer.Option(
        help="Optimiser study: every row once per optimiser (label row/opt), e.g. sgd\\[lr=0.05],adam.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Bench folder (default bench/TIME). Re-running into it "
                                                     "finishes only the missing runs.")] = None,
    experiment: Annotated[Optional[Path], typer.Option(help="Experiment YAML (datasets, seeds, base, rows, "
                                                            "optimizers, dataset_set); options above override it.")] = None,
    report: Annotated[bool, typer.Option(help="Write report.html at the end (needs matplotlib).")] = True,
    topk: Annotated[bool, typer.Option("--topk", help="Top-K runs (rank all items; Recall/NDCG@K), as a `topk:` "
                                       "section in the base config.")] = False,
) -> None:
    """Benchmark rows x datasets x seeds; aggregate mean ± std with paired significance tests.

    Exit code 1 when some run failed (its error.json says why; the others are aggregated)."""
    from polyrec.bench.runner import bench_command
    from polyrec.report import write_report

    code = bench_command(dataset, models, seeds, config, set_, optimizers, out, experiment,
                         report=write_report if report else None, topk=topk, folds=folds)
    if code:
        raise typer.Exit(code)


def _fail(message: str) -> None:
    """One line on stderr (never wrapped, so logs and grep see it whole), exit 2."""
    err_console.print("[bold red]error:[/] ", end="")
    err_console.print(message, markup=False, soft_wrap=True)
    sys.exit(2)


def main() -> None:
    """Every user error is one line and exit 2; anything else is a bug, shown with its traceback (exit 1)."""
    try:
        app()
    except PolyrecError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err_console.print("interrupted; the last finished epoch's checkpoint is kept (use --resume).")
        sys.exit(130)
    except MemoryError:
        _fail("out of memory: try a smaller train.batch_size / train.eval_batch_size, or a machine with more memory.")
    except OSError as exc:  # a disk, permission or file problem the earlier checks could not foresee
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        _fail(f"{exc.strerror or exc}{where}")
    except Exception:  # noqa: BLE001 - not a user error: show everything a bug report needs
        import traceback

        from polyrec import __version__

        traceback.print_exc()
        err_console.print(f"[bold red]this is a bug in polyrec {__version__}[/] (not a problem with your input): "
                          "please report it with the command line and the traceback above.")
        sys.exit(1)


if __name__ == "__main__":
    main()

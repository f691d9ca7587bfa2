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
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """Rows: every (scenario, head) cell, then each head over all scenarios, then overall."""
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
    if metrics.get("overall"):
        o = metrics["overall"]
        table.add_row("all", "overall (pooled)", "", "", _fmt(o["auc"]), _fmt(o["logloss"]), "", style="bold")
        table.add_row("all", "mean of heads", "", "", _fmt(o["mean_auc"]), "", "", style="bold")
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


@app.command()
def train(
    dataset: Annotated[Optional[str], typer.Option(help="Dataset recipe (see `polyrec datasets list`).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model name (see `polyrec models list`).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML config with data/model/train sections.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override, e.g. --set train.lr=0.01")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Shortcut for --set train.epochs=N.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Shortcut for --set train.seed=N.")] = None,
    balance: Annotated[Optional[str], typer.Option(help="Task balancer, e.g. sum.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/DATASET-MODEL-TIME).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train a model and print per-(scenario, task) metrics on the test split."""
    from polyrec.config import load_config
    from polyrec.train.run import train_run

    if resume:
        if out is None:
            raise PolyrecError("--resume needs --out RUN_DIR (the run to continue).")
        if (out / "config.yaml").exists():
            cfg = load_config(out / "config.yaml")
        else:
            raise PolyrecError(f"Cannot resume: {out / 'config.yaml'} does not exist.")
    else:
        overrides = list(set_ or [])
        for key, value in (("data.dataset", dataset), ("model.name", model), ("train.epochs", epochs),
                           ("train.seed", seed), ("train.balance", balance)):
            if value is not None:
                overrides.append(f"{key}={value}")
        cfg = load_config(config, overrides)
        from polyrec.train.run import validate_config

        validate_config(cfg)  # fail fast on unknown names, before any data work
        if out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{cfg.data.dataset}-{cfg.model.name}-{stamp}"
    console.print(f"run folder: {out}")
    result = train_run(cfg, out, resume=resume, log=console.print,
                       progress_factory=_progress_factory(cfg.train.progress and not quiet))
    m = result.metrics
    console.print(f"best epoch {m['best_epoch']} of {m['epochs_run']} (val {m['monitor']} = {m['best_val_monitor']:.4f})")
    console.print(metrics_table(m["test"], f"{m['dataset']} / {m['model']}: test metrics"))
    console.print(f"saved: {out}/metrics.json, {out}/model.safetensors")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    json_out: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
) -> None:
    """Re-evaluate a trained run on a split of its dataset."""
    from polyrec.train.run import evaluate_run

    metrics = evaluate_run(run_dir, split, log=err_console.print)
    if json_out:
        console.print_json(json.dumps(metrics))
    else:
        console.print(metrics_table(metrics, f"{run_dir}: {split} metrics"))


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    input: Annotated[Path, typer.Option("--input", help="Rows to score: .parquet, .csv or .tsv.")],
    output: Annotated[Path, typer.Option("--output", help="Output .parquet: one score column per head.")],
) -> None:
    """Score new rows with a trained run (encoders and weights from the run folder)."""
    from polyrec.serve.predict import predict_file

    if output.suffix != ".parquet":
        raise PolyrecError(f"--output must end in .parquet, got {output}")
    n = predict_file(run_dir, input, output)
    console.print(f"wrote {n} rows to {output}")


@models_app.command("list")
def models_list() -> None:
    """Registered models and their hyper-parameters."""
    from polyrec.models import MODELS

    table = Table("model", "summary", "parameters (defaults)")
    for name, cls in sorted(MODELS.items()):
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        params = ", ".join(f"{k}={v.default}" for k, v in cls.Params.model_fields.items())
        table.add_row(name, doc, params)
    console.print(table)


@datasets_app.command("list")
def datasets_list() -> None:
    """Dataset recipes and whether their files are present in the data directory."""
    from polyrec.recipes import RECIPES
    from polyrec.settings import data_dir

    table = Table("dataset", "description", "files")
    for name, recipe in sorted(RECIPES.items()):
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
    split: Annotated[Optional[str], typer.Option(help="random, temporal or official.")] = None,
) -> None:
    """Download (if needed), split, encode and cache a dataset; print where the splits are."""
    from polyrec.config import DataConfig
    from polyrec.recipes.prepare import describe, prepare

    try:
        cfg = DataConfig(dataset=name, split=split)
    except Exception as exc:  # pydantic validation of --split
        raise PolyrecError(f"Invalid --split {split!r}: use random, temporal or official.") from exc
    data = prepare(cfg, seed=seed, log=console.print)
    console.print(describe(data))
    for s in data.splits:
        console.print(f"  {s}: {data.raw_split_path(s)}")


def main() -> None:
    try:
        app()
    except PolyrecError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted; the last finished epoch's checkpoint is kept (use --resume).")
        sys.exit(130)


if __name__ == "__main__":
    main()

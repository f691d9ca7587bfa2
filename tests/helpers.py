"""Test helpers: a synthetic ModelSpec/Batch, a tiny synthetic dataset recipe, small utilities."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from polyrec.data.batching import Batch
from polyrec.data.schema import Schema
from polyrec.errors import PolyrecError
from polyrec.data.spec import ModelSpec, TaskInfo
from polyrec.data.recipe import RawData, Recipe

SCENARIOS = ("<unknown>", "north", "south", "east")  # id 0 = unknown slot, then 3 real scenarios


# --- a synthetic model input: 3 scenarios x 2 tasks; categorical + numeric + sequence fields ---------
def make_spec(tasks: list[TaskInfo] | None = None, vector_dims: dict[str, int] | None = None) -> ModelSpec:
    """`vector_dims`: dense vector features, the numeric matrix's last columns (make_batch fills them)."""
    return ModelSpec(
        vocab_sizes=[12, 25, len(SCENARIOS)],
        categorical_fields=["user_id", "item_id", "region"],  # the scenario is embedded as the last field
        numeric_fields=["age", "price"],
        sequence_vocab={"genres": 9},
        scenario_names=list(SCENARIOS),
        tasks=tasks or [TaskInfo("click", "binary"), TaskInfo("like", "binary")],
        vector_dims=dict(vector_dims or {}),
    )


def make_batch(spec: ModelSpec, n: int, seed: int) -> tuple[Batch, torch.Tensor]:
    """A batch of n rows covering every field, and labels [n, T] (like implies click)."""
    g = torch.Generator().manual_seed(seed)
    scenario = torch.randint(0, spec.n_scenarios, (n,), generator=g)
    cats = [torch.randint(0, v, (n,), generator=g) for v in spec.vocab_sizes[:-1]] + [scenario]
    categorical = torch.stack(cats, 1).to(torch.int32)
    numeric = torch.randn(n, len(spec.numeric_fields) + sum(spec.vector_dims.values()), generator=g)
    seqs = {}
    for name, vocab in spec.sequence_vocab.items():
        ids = torch.randint(1, vocab, (n, 5), generator=g)
        length = torch.randint(0, 6, (n, 1), generator=g)  # 0..5 tokens, padded with id 0
        seqs[name] = torch.where(torch.arange(5) < length, ids, 0).to(torch.int32)
    batch = Batch(categorical, numeric, seqs, scenario.to(torch.int64))
    cols = []
    for t in spec.tasks:
        if t.type == "binary":
            cols.append((torch.rand(n, generator=g) < 0.5).float())
        else:
            cols.append(torch.randn(n, generator=g) + 3.0)
    labels = torch.stack(cols, 1)
    names = spec.task_names
    if "click" in names and "like" in names:
        labels[:, names.index("like")] *= labels[:, names.index("click")]
    return batch, labels


def splice(a: Batch, b: Batch, rows_from_a: list[int]) -> Batch:
    """A batch equal to b except the given rows, which come from a."""
    idx = torch.tensor(rows_from_a)

    def mix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = y.clone()
        out[idx] = x[idx]
        return out

    return Batch(mix(a.categorical, b.categorical), mix(a.numeric, b.numeric),
                 {k: mix(a.sequences[k], b.sequences[k]) for k in a.sequences}, mix(a.scenario, b.scenario))


def take(batch: Batch, rows: slice) -> Batch:
    return Batch(batch.categorical[rows], batch.numeric[rows], {k: v[rows] for k, v in batch.sequences.items()},
                 batch.scenario[rows])


# --- a tiny synthetic dataset with real signal, registered as a recipe by a fixture --------------
TINY_SCHEMA: dict[str, Any] = {
    "features": [
        {"name": "user_id", "type": "categorical"},
        {"name": "item_id", "type": "categorical"},
        {"name": "x", "type": "numeric", "fill": "mean", "scale": "standard"},
        {"name": "tags", "type": "sequence", "sep": "|", "max_len": 3},
    ],
    "scenario": {"name": "region"},
    "tasks": [{"name": "click", "type": "binary"}, {"name": "like", "type": "binary"}],
    "user": "user_id",
}


def write_tiny_table(path: Path, n: int = 3000, seed: int = 7) -> Path:
    """Users in 3 regions; a long tail of items (some appear only once); click/like from a logistic model."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 60, 400
    user = rng.integers(0, n_users, n)
    item = np.minimum(rng.zipf(1.3, n) - 1, n_items - 1)
    region = np.array(["north", "south", "east"])[user % 3]
    x = rng.normal(size=n)
    x_obs = np.where(rng.random(n) < 0.1, np.nan, x)  # 10% missing
    tags = ["|".join(f"t{k}" for k in rng.choice(6, rng.integers(0, 5), replace=False)) for _ in range(n)]
    user_bias = rng.normal(size=n_users)
    item_bias = rng.normal(size=n_items)
    z = user_bias[user] + item_bias[item] + 1.0 * x
    click = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int8)
    like = (click * (rng.random(n) < 1 / (1 + np.exp(-(item_bias[item] - 0.5))))).astype(np.int8)
    ts = rng.integers(0, 50, n)  # coarse, so many per-user ties
    table = pa.table({
        "user_id": pa.array([f"u{u}" for u in user]), "item_id": pa.array(item.astype(np.int64)),
        "x": pa.array(x_obs), "tags": pa.array(tags), "region": pa.array(region),
        "click": pa.array(click), "like": pa.array(like), "ts": pa.array(ts),
    })
    pq.write_table(table, path)
    return path


class TinyRecipe(Recipe):
    name = "tiny-synthetic"
    folder = "tiny-synthetic"
    description = "synthetic test data: 3 regions x click/like"
    default_split = "random"
    time_column = "ts"
    user_column = "user_id"

    def __init__(self, path: Path, schema: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self._schema = schema or TINY_SCHEMA
        self.load_calls = 0

    def schema(self) -> Schema:
        return Schema.from_dict(self._schema)

    def locate(self, root: Path) -> dict[str, Path]:
        if not self.path.exists():
            raise self.missing(root, [self.path.name], "")
        return {"table": self.path}

    def download(self, root: Path, log: Callable[[str], None]) -> None:
        raise PolyrecError("tiny-synthetic cannot be downloaded")

    def load(self, files: dict[str, Path], options: dict[str, Any]) -> RawData:
        self.load_calls += 1
        return RawData(table=pq.read_table(files["table"]), notes=["synthetic"])


# --- small utilities -----------------------------------------------------------------------
def nan_equal(a: Any, b: Any) -> bool:
    """Deep equality of nested metric dicts where NaN == NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b


def require_dataset(name: str) -> None:
    """Skip (with the reason) unless the original files of dataset `name` are in the data directory."""
    from polyrec.data.prepare import get_recipe
    from polyrec.settings import data_dir

    try:
        get_recipe(name).locate(data_dir())
    except PolyrecError as exc:
        pytest.skip(f"real {name} files not available (../shared/data absent and POLYREC_DATA not "
                    f"pointing at them; tests never download): {exc}")


def quiet(_: str) -> None:
    """A log callback that drops messages."""


def register_tiny_recipes(folder: Path) -> dict[str, "TinyRecipe"]:
    """Write (once) and register 'tiny-synthetic' and 'tiny-onelike' (every `like` label 0, so like/auc is
    undefined on every split) from `folder`; returns them by name. The caller unregisters if it must."""
    import pyarrow.compute as pc

    from polyrec.data.recipe import RECIPES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny, onelike = folder / "tiny.parquet", folder / "tiny-onelike.parquet"
    if not tiny.exists():
        write_tiny_table(tiny)
    if not onelike.exists():
        table = pq.read_table(tiny)
        table = table.set_column(table.schema.get_field_index("like"), "like",
                                 pc.multiply(table["like"], pa.scalar(0, table["like"].type)))
        pq.write_table(table, onelike)
    recipes = {"tiny-synthetic": TinyRecipe(tiny), "tiny-onelike": TinyRecipe(onelike)}
    recipes["tiny-onelike"].name = "tiny-onelike"
    RECIPES.update(recipes)
    return recipes


def run_cli(*args: str) -> tuple[int, str, str]:
    """polyrec.cli.main in this process (so the tiny recipes are registered): exit code, stdout, stderr."""
    import contextlib
    import io

    from polyrec.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["polyrec", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()

"""Dataset recipes: where the original files live, how to fetch them, how to turn them into a table.

A recipe returns a pyarrow table in the *raw joined* form its schema describes (label columns
derived, scenario column present). Splitting, encoder fitting and caching are generic and live
in `polyrec.recipes.prepare`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import yaml

from polyrec.data.schema import Schema
from polyrec.errors import PolyrecError
from polyrec.utils.registry import Registry


@dataclass
class RawData:
    """A recipe's output: one table (split later) or official splits, plus facts for the report."""

    table: pa.Table | None = None
    splits: dict[str, pa.Table] | None = None
    notes: list[str] | None = None


class Recipe(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    folder: ClassVar[str]  # sub-directory of the data directory
    default_split: ClassVar[str] = "random"
    auto_download: ClassVar[bool] = True  # False: the source needs an account or ships elsewhere
    time_column: ClassVar[str | None] = None  # for per-user temporal splits
    user_column: ClassVar[str | None] = None
    kg_name: ClassVar[str | None] = None  # a knowledge graph ships as <folder>/<kg_name>.kg and .link

    schema_name: ClassVar[str | None] = None  # YAML under schemas/ (default: the recipe name)

    def schema(self) -> Schema:
        name = self.schema_name or self.name
        text = resources.files("polyrec.recipes").joinpath(f"schemas/{name}.yaml").read_text()
        return Schema.from_dict(yaml.safe_load(text), origin=f"built-in schema of {self.name}")

    @abstractmethod
    def locate(self, root: Path) -> dict[str, Path]:
        """Paths of the files this recipe reads; raises PolyrecError naming what is missing."""

    @abstractmethod
    def download(self, root: Path, log: Callable[[str], None]) -> None:
        """Fetch the original files into root/folder."""

    @abstractmethod
    def load(self, files: dict[str, Path], options: dict[str, Any]) -> RawData:
        """Read the original files into the raw joined table(s)."""

    def download_kg(self, root: Path, log: Callable[[str], None]) -> None:
        """Fetch the knowledge-graph files into root/folder (recipes with a `kg_name`)."""
        raise PolyrecError(f"Dataset {self.name!r} has no knowledge graph to download.")

    def derive(self, table: pa.Table) -> pa.Table:
        """Columns computed from raw ones (e.g. the scenario bucket); applied to prediction inputs too."""
        return table

    def missing(self, root: Path, files: list[str], how: str) -> PolyrecError:
        where = root / self.folder
        return PolyrecError(
            f"Dataset {self.name!r}: missing {', '.join(str(where / f) for f in files)}. {how} "
            f"Set POLYREC_DATA to the directory holding '{self.folder}/', or run "
            f"`polyrec datasets prepare {self.name}` to download it."
        )


def read_csv(path: Path) -> pa.Table:
    """A processed CSV with a header (types inferred; ids become strings in the encoders anyway)."""
    import pyarrow.csv as pacsv

    if not path.exists():
        raise PolyrecError(f"File not found: {path}")
    try:
        return pacsv.read_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 24))
    except pa.ArrowInvalid as exc:
        raise PolyrecError(f"Could not parse {path}: {exc}") from None


def seeded_holdout(table: pa.Table, fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """Split off a seeded random `fraction` of rows (e.g. a validation set from an official train file)."""
    import numpy as np

    perm = np.random.default_rng(seed).permutation(table.num_rows)
    cut = int(round(table.num_rows * fraction))
    return table.take(np.sort(perm[cut:])), table.take(np.sort(perm[:cut]))


# name -> a recipe instance; third-party recipes register through the `polyrec.recipes` entry-point group
RECIPES: Registry[Recipe] = Registry("dataset", make=lambda cls: cls(), entry_point_group="polyrec.recipes")


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: an instance of the recipe under its `name` (a name registered twice is an error)."""
    return RECIPES.register(cls.name)(cls)

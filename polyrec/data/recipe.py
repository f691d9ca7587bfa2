"""Dataset recipes: where the original files live, how to fetch them, how to turn them into a table.

A recipe returns a pyarrow table in the *raw joined* form its schema describes (label columns
derived, scenario column present). Splitting, encoder fitting and caching are generic and live
in `polyrec.data.prepare`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
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

    schema_name: ClassVar[str | None] = None  # YAML under schemas/ (default: the recipe name); "" = none
    topk_schema_name: ClassVar[str | None] = None  # YAML under schemas/ for top-K runs (user, item, labels)

    def schema(self) -> Schema:
        """The built-in schema of CTR-style runs (rows of features and labels)."""
        return self._builtin_schema(self.name if self.schema_name is None else self.schema_name, "CTR-style runs")

    def topk_schema(self) -> Schema:
        """The built-in schema of top-K runs (user x item interactions with binary labels)."""
        return self._builtin_schema(self.topk_schema_name, "top-K runs (a user x item schema)")

    def _builtin_schema(self, name: str | None, what: str) -> Schema:
        if not name:
            raise PolyrecError(f"Dataset {self.name!r} has no built-in schema for {what}: give one with --schema "
                               "(data.schema_file).")
        text = resources.files("polyrec.recipes").joinpath(f"schemas/{name}.yaml").read_text()
        return Schema.from_dict(yaml.safe_load(text), origin=f"built-in schema of {self.name}")

    def items(self, files: dict[str, Path]) -> pa.Table | None:
        """The item catalogue (`item_id`, optional `title`), never-interacted items included, or None: top-K
        runs rank every catalogue item (without one, the items seen in the interactions)."""
        return None

    def knowledge_graph(self, root: Path, download: bool, log: Callable[[str], None],
                        options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, str], list[Path]] | None:
        """(triples [K, 3] of str, {item id: entity id}, files read) of the recipe's knowledge graph, or None.
        Default: RecBole's atomic `<folder>/<kg_name>.kg` and `.link`, fetched with `download_kg` if missing."""
        if self.kg_name is None:
            return None
        from polyrec.data.kg_files import kg_paths, read_kg

        folder = root / self.folder
        paths = kg_paths(folder, self.kg_name)
        if download and not all(p.exists() for p in paths.values()):
            self.download_kg(root, log)
        triples, links = read_kg(paths)
        return triples, links, list(paths.values())

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
RECIPES: Registry[Recipe] = Registry("dataset", builtins="polyrec.recipes", make=lambda cls: cls(), entry_point_group="polyrec.recipes")


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: an instance of the recipe under its `name` (a name registered twice is an error)."""
    return RECIPES.register(cls.name)(cls)

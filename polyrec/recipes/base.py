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
    time_column: ClassVar[str | None] = None  # for per-user temporal splits
    user_column: ClassVar[str | None] = None

    def schema(self) -> Schema:
        text = resources.files("polyrec.recipes").joinpath(f"schemas/{self.name}.yaml").read_text()
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


RECIPES: dict[str, Recipe] = {}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    RECIPES[cls.name] = cls()
    return cls

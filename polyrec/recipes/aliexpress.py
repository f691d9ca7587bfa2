"""AliExpress search logs (Li et al., CIKM 2020; Tianchi dataset 74690), one subset per country.

Tasks: click and conversion. Inputs: 16 categorical and 63 numerical fields. Scenario = country
when several country subsets are combined (every country present under $POLYREC_DATA/aliexpress/
as AliExpress_<CC>/train.csv and test.csv is used). `search_id` groups rows for gAUC (per-search
AUC, the analogue of per-user gAUC). Splits: the official test file is the test split; a seeded 10%
of the official train file is held out for validation (the reference code validates on test,
which we refuse to do).

The data needs a Tianchi account: no automatic download. `aliexpress-sample` reads the 100/20 row
sample that ships with torch-rechub (its country is not stated; it is called "sample").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from polyrec.errors import PolyrecError
from polyrec.data.recipe import RawData, Recipe, read_csv, register_recipe, seeded_holdout

COUNTRIES = ("NL", "ES", "FR", "US", "RU")


@register_recipe
class AliExpress(Recipe):
    name = "aliexpress"
    folder = "aliexpress"
    schema_name = "aliexpress"
    description = "AliExpress search logs; scenario = country (NL/ES/FR/US/RU present); tasks click, conversion."
    default_split = "official"
    auto_download = False

    def locate(self, root: Path) -> dict[str, Path]:
        d = root / self.folder
        files = {}
        for cc in COUNTRIES:
            if (d / f"AliExpress_{cc}" / "train.csv").exists() and (d / f"AliExpress_{cc}" / "test.csv").exists():
                files[f"{cc}/train"] = d / f"AliExpress_{cc}" / "train.csv"
                files[f"{cc}/test"] = d / f"AliExpress_{cc}" / "test.csv"
        if not files:
            raise self.missing(root, [f"AliExpress_{cc}/train.csv" for cc in COUNTRIES[:1]],
                               "(any of AliExpress_NL/ES/FR/US/RU) from Tianchi dataset 74690; no automatic download.")
        return files

    def download(self, root: Path, log: Callable[[str], None]) -> None:
        raise PolyrecError(f"{self.name}: download AliExpress_<CC>.zip from Tianchi (dataset 74690, account needed) "
                           f"and unzip into {root / self.folder}.")

    def _with_country(self, table: pa.Table, country: str) -> pa.Table:
        return table.append_column("country", pa.array([country] * table.num_rows, type=pa.string()))

    def load(self, files: dict[str, Path], options: dict[str, Any]) -> RawData:
        trains, tests, notes = [], [], []
        for key, path in sorted(files.items()):
            country, part = key.split("/")
            t = self._with_country(read_csv(path), country)
            (trains if part == "train" else tests).append(t)
            notes.append(f"{country} {part}: {t.num_rows} rows")
        train, val = seeded_holdout(pa.concat_tables(trains, promote_options="default"), 0.1, options["_split_seed"])
        notes.append("validation = seeded 10% of the official train files; test = the official test files")
        return RawData(splits={"train": train, "val": val, "test": pa.concat_tables(tests, promote_options="default")},
                       notes=notes)


@register_recipe
class AliExpressSample(AliExpress):
    name = "aliexpress-sample"
    folder = "samples/aliexpress"
    description = "The 100/20-row AliExpress sample shipped with torch-rechub (schema checks only)."

    def locate(self, root: Path) -> dict[str, Path]:
        d = root / self.folder
        files = {"sample/train": d / "aliexpress_train_sample.csv", "sample/test": d / "aliexpress_test_sample.csv"}
        missing = [p.name for p in files.values() if not p.exists()]
        if missing:
            raise self.missing(root, missing, "It ships with torch-rechub's examples.")
        return files

    def download(self, root: Path, log: Callable[[str], None]) -> None:
        raise PolyrecError(f"{self.name} is a sample shipped with torch-rechub; expected under {root / self.folder}.")

"""UCI Census-Income (KDD) in the MMoE paper's framing (Ma et al., KDD 2018).

Tasks: income > 50K and marital status == never married. Inputs: the other 39 attributes of the
40 census attributes (marital status becomes a label, so it is not an input; the instance weight
is a sampling weight, not an attribute): 7 numeric, 32 categorical.

Splits: with the official training file present, it is the training split and the official test
file is halved (seeded) into validation and test, as in the MMoE paper. With only the test file
present (as in some mirrors), that file is split 80/10/10 with the run's split seed; the metrics
are then not comparable with published numbers, and the run notes say so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.data.io import read_delimited
from polyrec.errors import PolyrecError
from polyrec.data.recipe import RawData, Recipe, register_recipe
from polyrec.utils.download import fetch_url

UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld"
COLUMNS = [
    "age", "class_of_worker", "industry_code", "occupation_code", "education", "wage_per_hour",
    "enrolled_in_edu_inst_last_wk", "marital_status", "major_industry_code", "major_occupation_code", "race",
    "hispanic_origin", "sex", "member_of_labor_union", "reason_for_unemployment",
    "full_or_part_time_employment_stat", "capital_gains", "capital_losses", "dividends_from_stocks",
    "tax_filer_status", "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household", "instance_weight",
    "migration_code_change_in_msa", "migration_code_change_in_reg", "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago", "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self",
    "citizenship", "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits", "weeks_worked_in_year", "year", "income_class",
]


@register_recipe
class CensusIncome(Recipe):
    name = "census-income"
    folder = "census-income"
    description = ("UCI Census-Income (KDD), MMoE framing: tasks income>50K and never-married; "
                   "39 input attributes (7 numeric, 32 categorical).")
    default_split = "official"

    def locate(self, root: Path) -> dict[str, Path]:
        d = root / self.folder
        found = {}
        for part in ("data", "test"):
            p = next((d / f"census-income.{part}{ext}" for ext in (".gz", "") if (d / f"census-income.{part}{ext}").exists()), None)
            if p is not None:
                found[part] = p
        if "test" not in found and "data" not in found:
            raise self.missing(root, ["census-income.data.gz", "census-income.test.gz"],
                               f"UCI distributes them at {UCI}/.")
        return found

    def download(self, root: Path, log: Callable[[str], None]) -> None:
        d = root / self.folder
        for part in ("data", "test"):
            try:
                fetch_url(f"{UCI}/census-income.{part}.gz", d / f"census-income.{part}.gz", log=log)
            except OSError as exc:
                raise PolyrecError(f"Could not download census-income.{part}.gz from UCI ({exc}). "
                                   f"Fetch it from {UCI}/ into {d}.") from None

    def _read(self, path: Path) -> pa.Table:
        t = read_delimited(path, ",", COLUMNS, strip=True)
        t = t.append_column("income", pc.cast(pc.equal(t["income_class"], "50000+."), pa.int8()))
        return t.append_column("never_married", pc.cast(pc.equal(t["marital_status"], "Never married"), pa.int8()))

    def load(self, files: dict[str, Path], options: dict[str, Any]) -> RawData:
        split = options.get("_split")
        if "data" in files and split in (None, "official"):
            test = self._read(files["test"])
            rng = np.random.default_rng(options["_split_seed"])
            half = rng.permutation(test.num_rows)
            cut = test.num_rows // 2
            return RawData(splits={"train": self._read(files["data"]), "val": test.take(np.sort(half[:cut])),
                                   "test": test.take(np.sort(half[cut:]))},
                           notes=["official split: train file / test file halved into val and test"])
        source = files.get("test") or files["data"]
        table = self._read(source)
        if "data" in files and "test" in files:
            table = pa.concat_tables([self._read(files["data"]), table])
        return RawData(table=table, notes=[
            f"random split of {source.name}"
            + ("" if "data" in files else " (official training file absent: metrics not comparable with published ones)")
        ])

"""Ali-CCP (Alibaba Click and Conversion Prediction; Ma et al., SIGIR 2018) as processed by the
multi-scenario literature (Scenario-Wise-Rec / torch-rechub CSVs: train/val/test, 23 sparse and 8
dense fields).

Scenario = field `301` (3 values in the processed data). Tasks: click and purchase. Rows with a
purchase but no click are dropped (a purchase without a click is impossible in the funnel and is
dropped by the reference pipelines too); the number dropped is in the run notes.

The full data needs a Tianchi account (dataset 408), so it is not downloaded automatically:
place ali_ccp_{train,val,test}.csv in $POLYREC_DATA/ali-ccp/. `aliccp-sample` reads the 100/50/50
row samples that ship in Scenario-Wise-Rec (for smoke tests only; no meaningful metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from polyrec.errors import PolyrecError
from polyrec.data.recipe import RawData, Recipe, read_csv, register_recipe


@register_recipe
class AliCCP(Recipe):
    name = "aliccp"
    folder = "ali-ccp"
    schema_name = "aliccp"
    description = "Ali-CCP processed CSVs; scenario = field 301; tasks click, purchase (official train/val/test)."
    default_split = "official"
    auto_download = False
    pattern = "ali_ccp_{}.csv"

    def locate(self, root: Path) -> dict[str, Path]:
        files = {s: root / self.folder / self.pattern.format(s) for s in ("train", "val", "test")}
        missing = [p.name for p in files.values() if not p.exists()]
        if missing:
            raise self.missing(root, missing, "Ali-CCP needs a Tianchi account (dataset 408) and the "
                               "Scenario-Wise-Rec preprocessing; no automatic download.")
        return files

    def download(self, root: Path, log: Callable[[str], None]) -> None:
        raise PolyrecError(
            f"{self.name}: the data cannot be downloaded automatically (Tianchi requires an account). "
            f"Put ali_ccp_train.csv, ali_ccp_val.csv and ali_ccp_test.csv into {root / self.folder}."
        )

    def load(self, files: dict[str, Path], options: dict[str, Any]) -> RawData:
        splits, notes = {}, []
        for split, path in files.items():
            t = read_csv(path)
            impossible = pc.and_(pc.equal(t["purchase"], 1), pc.equal(t["click"], 0))
            dropped = pc.sum(impossible).as_py() or 0
            splits[split] = t.filter(pc.invert(impossible))
            notes.append(f"{split}: {t.num_rows} rows, {dropped} with purchase but no click dropped")
        return RawData(splits=splits, notes=notes)


@register_recipe
class AliCCPSample(AliCCP):
    name = "aliccp-sample"
    folder = "samples/ali-ccp-scenario-wise-rec"
    description = "The 100/50/50-row Ali-CCP sample shipped with Scenario-Wise-Rec (schema checks only)."
    pattern = "ali_ccp_{}_sample.csv"

    def download(self, root: Path, log: Callable[[str], None]) -> None:
        raise PolyrecError(f"{self.name} is a sample that ships with Scenario-Wise-Rec; expected under {root / self.folder}.")

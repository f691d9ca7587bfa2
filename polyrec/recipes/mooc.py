"""Course recommendation (the WAA-TA article's domain): MOOCCubeX and MOOCCube enrolments with course
knowledge graphs, as top-K recipes. Read the PROVENANCE.md beside each dataset first.

Both are derivatives that ship elsewhere (no official download here, `auto_download = False`); put them
under the data directory as ../shared/data has them. Neither has an engagement signal (no watching,
exercise or completion data), so a second task cannot be derived: both run single-task, the one task
`enrol` (every enrolment is a positive; negatives are sampled by the top-K trainer). A multi-task model
(waata, mmoe, ...) then has one head; WAA-TA's auxiliary-task machinery has nothing to weigh. They have
no CTR-style schema: every row is a positive, so there is nothing to classify.

- `mooccubex` (mooccubex-5core-kgat): 1,182,745 enrolments, 97,722 users, 3,321 courses; `enroll_rank`
  (the enrolment order; there are no timestamps) is the time column, so data.split=temporal and
  leave_last_out work (leave_last_out is the derivative's own protocol: each user's last course tests).
  The KG is KGAT's (field, teacher, concept, school). Its relation `course.about_similarity` was made by
  a sentence-embedding model, not taken from MOOCCubeX, so it is left out unless
  `data.options.kg_similarity: true`.
- `mooccube` (mooccube-kgan): 32,086 enrolments, 7,157 users, 219 courses, KGAN's 7-relation KG. Its
  label-0 rows are negatives the KGAN authors sampled, not observed non-enrolments: the schema's filter
  drops them. No time column: random split only. Small: for tests and quick checks, not headline numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.data.sources import ReadOptions, read_source
from polyrec.errors import PolyrecError
from polyrec.data.recipe import RawData, Recipe, register_recipe

SIMILARITY = "course.about_similarity"


class _MoocRecipe(Recipe):
    auto_download = False
    schema_name = ""  # top-K only
    FILES: dict[str, str] = {}

    def locate(self, root: Path) -> dict[str, Path]:
        d = root / self.folder
        files = {k: d / name for k, name in self.FILES.items()}
        missing = [p.name for p in files.values() if not p.exists()]
        if missing:
            raise self.missing(root, missing, "It ships elsewhere (see the PROVENANCE.md that goes with it).")
        return files

    def download(self, root: Path, log: Callable[[str], None]) -> None:
        raise PolyrecError(f"Dataset {self.name!r} cannot be downloaded here: put the folder {self.folder}/ "
                           "(see its PROVENANCE.md) under the data directory (POLYREC_DATA).")

    def _kg_files(self, root: Path) -> dict[str, Path]:
        files = self.locate(root)
        return {k: files[k] for k in ("kg", "items") if k in files}


@register_recipe
class MOOCCubeX(_MoocRecipe):
    name = "mooccubex"
    folder = "mooccubex-5core-kgat"
    topk_schema_name = "mooccubex-topk"
    time_column = "enroll_rank"
    user_column = "user_id"
    description = ("MOOCCubeX course enrolments, 5-core (97,722 users, 3,321 courses, 1.18M enrolments) with a course "
                   "KG; top-K only, one task (enrol).")
    FILES = {"inter": "interactions.tsv.gz", "kg": "kg_triples.tsv.gz", "items": "item_list.txt"}

    def load(self, files: dict[str, Path], options: dict[str, Any]) -> RawData:
        table = read_source(files["inter"], ReadOptions(format="tsv"), ("user_id", "course_id", "gender"))
        return RawData(table=table, notes=[f"{table.num_rows} enrolments from {files['inter'].name} (a derivative: "
                                           "complete-profile users, 5-core; see PROVENANCE.md)"])

    def knowledge_graph(self, root: Path, download: bool, log: Callable[[str], None],
                        options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, str], list[Path]]:
        files = self._kg_files(root)
        kg = read_source(files["kg"], ReadOptions(format="tsv"), ("head_remap", "relation", "tail_remap"))
        if not (options or {}).get("kg_similarity", False):
            kg = kg.filter(np.asarray(kg["relation"].to_numpy(zero_copy_only=False)) != SIMILARITY)
        triples = np.stack([kg[c].to_numpy(zero_copy_only=False).astype(str)
                            for c in ("head_remap", "relation", "tail_remap")], axis=1)
        items = read_source(files["items"], ReadOptions(format="csv", delimiter=" "), ("org_id", "remap_id"))
        links = dict(zip(items["org_id"].to_pylist(), items["remap_id"].to_pylist()))
        return triples, links, list(files.values())


@register_recipe
class MOOCCube(_MoocRecipe):
    name = "mooccube"
    folder = "mooccube-kgan"
    topk_schema_name = "mooccube-topk"
    description = ("MOOCCube course enrolments as KGAN ships them (7,157 users, 219 courses, 32k enrolments) with a "
                   "course KG; top-K only, one task (enrol); small, for tests.")
    FILES = {"inter": "ratings_final.txt", "kg": "kg_final.txt"}

    def _ratings(self, files: dict[str, Path]) -> pa.Table:
        opts = ReadOptions(format="tsv", header=False, columns=["user_id", "course_id", "label"])
        return read_source(files["inter"], opts, ("user_id", "course_id"))

    def items(self, files: dict[str, Path]) -> pa.Table:
        """Every course of the file (4 of the 219 occur only in sampled negatives: still recommendable)."""
        return pa.table({"item_id": pc.unique(self._ratings(files)["course_id"])})

    def load(self, files: dict[str, Path], options: dict[str, Any]) -> RawData:
        table = self._ratings(files)
        return RawData(table=table, notes=[f"{table.num_rows} rows from {files['inter'].name}; the label-0 rows are "
                                           "KGAN's sampled negatives and are dropped (schema filter)"])

    def knowledge_graph(self, root: Path, download: bool, log: Callable[[str], None],
                        options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, str], list[Path]]:
        files = self._kg_files(root)
        opts = ReadOptions(format="tsv", header=False, columns=["head", "relation", "tail"])
        kg = read_source(files["kg"], opts, ("head", "relation", "tail"))
        triples = np.stack([kg[c].to_numpy(zero_copy_only=False).astype(str) for c in kg.column_names], axis=1)
        # entities 0..218 are the courses, with the courses' own ids (PROVENANCE.md)
        heads = np.unique(triples[:, 0])
        return triples, {h: h for h in heads.tolist()}, list(files.values())

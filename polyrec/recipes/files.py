"""The built-in `files` source: your own files through the same prepare path as every recipe.

`data.files` (or `polyrec train --data PATH [--val V --test T] --schema S.yaml`) names the files; the
schema says which columns play which role and may derive labels/scenarios or aggregate an event log.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from polyrec.data.derive import raw_columns
from polyrec.data.schema import Schema
from polyrec.data.sources import apply_joins, check_columns, expand, read_source
from polyrec.errors import PolyrecError
from polyrec.data.recipe import RawData, Recipe, register_recipe

if TYPE_CHECKING:
    from polyrec.config import FilesConfig


@register_recipe
class FilesSource(Recipe):
    name = "files"
    folder = "."
    description = "your own files: polyrec train --data PATH --schema SCHEMA.yaml (or data.files in a config)"
    default_split = "random"

    def __init__(self, files: "FilesConfig | None" = None, schema: Schema | None = None) -> None:
        self.files = files
        self._schema = schema

    def configured(self, files: "FilesConfig", schema: Schema) -> "FilesSource":
        return FilesSource(files, schema)

    def schema(self) -> Schema:
        if self._schema is None:
            raise PolyrecError("The files source needs a schema: --schema SCHEMA.yaml (data.schema_file).")
        return self._schema

    def _parts(self) -> dict[str, str]:
        if self.files is None:
            raise PolyrecError("The files source needs data.files (polyrec train --data PATH --schema S.yaml).")
        f = self.files
        parts = {"train": f.main}
        if f.val is not None:
            parts.update(val=f.val, test=f.test)
        return parts

    def locate(self, root: Path) -> dict[str, Path]:
        """Every file read (shards and joins included), for fingerprints in the cache key."""
        out: dict[str, Path] = {}
        for part, path in self._parts().items():
            for i, p in enumerate(expand(path)):
                out[f"{part}:{i}"] = p.resolve()
        for k, j in enumerate(self.files.joins):
            for i, p in enumerate(expand(j.path)):
                out[f"join{k}:{i}"] = p.resolve()
        return out

    def download(self, root: Path, log: Callable[[str], None]) -> None:
        raise PolyrecError("Your own files are never downloaded: check the paths given to --data / data.files.")

    def load(self, files: dict[str, Path], options: dict[str, Any]) -> RawData:
        schema = self.schema()
        ids = set(schema.id_columns()) | {k for j in self.files.joins for k in j.keys}
        need = raw_columns(schema)
        tables, notes = {}, []
        for part, path in self._parts().items():
            t = read_source(path, self.files, ids)
            t = apply_joins(t, self.files.joins, ids)
            check_columns(t, need, f"The {part} file {path}")
            tables[part] = t
            notes.append(f"{part}: {path} ({t.num_rows} rows)")
        if "val" in tables:
            return RawData(splits=tables, notes=notes)
        return RawData(table=tables["train"], notes=notes)

    def derive(self, table: pa.Table) -> pa.Table:
        return table  # the schema's own `derive` section is applied by prepare and predict

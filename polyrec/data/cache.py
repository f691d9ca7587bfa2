"""On-disk columnar cache of encoded splits: one .npy per column, memory-mapped on load.

A cache entry is keyed by a hash of everything that decides its content (schema, recipe options,
source file fingerprints, split settings, format version), so a re-run with the same inputs reuses
it and any change produces a new entry. Entries are built in a temp dir and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from polyrec.data.encoders import EncodedSplit, Encoders
from polyrec.utils.io import atomic_directory

FORMAT_VERSION = 2  # 2: per-split cold.<role> columns (polyrec.data.coldstart)
SPLITS = ("train", "val", "test")


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Path, size and a hash of the first and last MiB: cheap even for multi-GB logs, and content-based."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), 2)
            h.update(fh.read(1 << 20))
    return {"name": path.name, "size": size, "sha256_head_tail": h.hexdigest()}


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def write_cache(
    entry: Path,
    encoders: Encoders,
    splits: dict[str, EncodedSplit],
    meta: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write encoders, columns and metadata as one atomic directory. `extra` maps file name -> writer(path)."""

    def build(tmp: Path) -> None:
        for split, data in splits.items():
            (tmp / split).mkdir()
            for name, col in data.columns().items():
                np.save(tmp / split / f"{name}.npy", np.ascontiguousarray(col))
        for fname, writer in (extra or {}).items():
            writer(tmp / fname)
        write_entry_files(tmp, encoders, {split: len(data) for split, data in splits.items()}, meta)

    atomic_directory(entry, build)


def write_entry_files(tmp: Path, encoders: Encoders, rows: dict[str, int], meta: dict[str, Any]) -> None:
    """encoders.json and, last, meta.json (whose presence marks an entry complete) into an entry being built."""
    (tmp / "encoders.json").write_text(json.dumps(encoders.to_dict()))
    (tmp / "meta.json").write_text(json.dumps({**meta, "rows": rows, "format": FORMAT_VERSION}, indent=1))


def read_cache(entry: Path) -> tuple[Encoders, dict[str, EncodedSplit], dict[str, Any]]:
    """Load a cache entry; columns are memory-mapped, so only what is used is read."""
    meta = json.loads((entry / "meta.json").read_text())
    encoders = Encoders.load(entry / "encoders.json")
    splits = {}
    for split in meta["rows"]:
        cols = {p.stem: np.load(p, mmap_mode="r") for p in sorted((entry / split).glob("*.npy"))}
        splits[split] = EncodedSplit.from_columns(cols)
    return encoders, splits, meta


def is_complete(entry: Path) -> bool:
    return (entry / "meta.json").exists()

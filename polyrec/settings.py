"""Where polyrec reads raw data and keeps its caches (overridable by environment variables)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Directory holding original dataset files: $POLYREC_DATA, else ~/.cache/polyrec/data."""
    env = os.environ.get("POLYREC_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "polyrec" / "data"


def cache_dir() -> Path:
    """Directory for encoded columnar caches: $POLYREC_CACHE, else ~/.cache/polyrec/encoded."""
    env = os.environ.get("POLYREC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "polyrec" / "encoded"

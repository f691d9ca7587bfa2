"""Atomic file writes: a crash mid-write never leaves a half-written checkpoint, bundle or cache."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyrec.errors import PolyrecError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temp file beside `path`, fsync it, then rename it over `path`.

    mkstemp creates the file 0600; it gets the usual 0666 & ~umask before the rename, so results and
    bundles are as readable as any file the user writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def atomic_directory(final: Path, build: Callable[[Path], None]) -> None:
    """Build a whole directory under a temp name, then rename it into place (first writer wins)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: Path) -> Any:
    """A JSON file the project wrote (run files, bundles), or one line naming it when missing, truncated or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PolyrecError(f"{path} is missing: {path.parent} is not a finished polyrec run.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PolyrecError(f"{path} is corrupt or truncated ({exc.__class__.__name__}) and cannot be read. "
                           "Retrain the run, or restore the file from a copy.") from None


def read_json_or_none(path: Path) -> Any:
    """A JSON file, or None when it is missing or unreadable (readers of bench folders, which may be partial)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file a user wrote (config, schema, experiment): 'not found' and syntax errors as one line that
    names the file, line and column."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise PolyrecError(f"{what} not found: {path}")
    if path.is_dir():
        raise PolyrecError(f"{what} {path} is a folder, not a YAML file.")
    try:
        return yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise PolyrecError(f"{what} {path} is not UTF-8 text.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolyrecError(f"{what} {path} is not valid YAML{where}: {problem}.") from None

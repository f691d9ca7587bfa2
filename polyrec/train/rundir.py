"""Run folders (training runs, bench folders, tune studies): claimed by one process, checked before any
work, and read back with errors that name the broken file.

Why a lock and not just "does config.yaml exist": two commands started together both see an empty
folder, and both used to write into it. The claim is an advisory `flock` on `<folder>/.polyrec.lock`
holding the holder's pid, host, command and start time. The kernel drops it when the process dies
(kill -9 included), so a crashed run never leaves a stale lock in the way of `--resume`. A folder that
the claim itself created and that is still empty at release is removed again, so a command that failed
early leaves nothing behind.

A training run's own files are checked and written here too (`check_run_dir`, `write_run_files`; the folder
layout is listed in polyrec.train.kind), so everything about run folders lives in this one module.
"""

from __future__ import annotations

import json
import shutil
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from polyrec.config import RunConfig, load_config
from polyrec.errors import PolyrecError
from polyrec.train.checkpoint import check_checkpoint
from polyrec.train.trainer import CHECKPOINT
from polyrec.utils.io import atomic_write_text

try:  # POSIX; elsewhere folders are not locked (documented in docs/reliability.md)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".polyrec.lock"


def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def ensure_folder(folder: Path, what: str = "run folder") -> bool:
    """Create `folder` (and parents) or say in one line why it cannot be; True when it was created."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PolyrecError(f"The {what} {folder} is a file, not a folder: choose another path.")
    existed = folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PolyrecError(f"Cannot create the {what} {folder}: {_reason(exc)}.") from None
    return not existed


def check_output_file(path: Path, what: str = "output file") -> None:
    """Fail before any work when `path` cannot be written: a folder in the way, or a parent that cannot
    hold files (missing and not creatable, a file, read-only). Creates missing parents."""
    path = Path(path)
    if path.is_dir():
        raise PolyrecError(f"The {what} {path} is a folder: give a file name.")
    blocking = next((p for p in path.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise PolyrecError(f"Cannot write the {what} {path}: {blocking} is a file, not a folder.")
    ensure_folder(path.parent, f"folder of the {what}")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    except OSError as exc:
        raise PolyrecError(f"Cannot write the {what} {path}: {_reason(exc)}.") from None
    os.close(fd)
    os.unlink(probe)


def lock_holder(folder: Path) -> str:
    """'pid 123 on host (polyrec train ..., since ...)' from a lock file, or what can be said without it."""
    try:
        info = json.loads((Path(folder) / LOCK).read_text())
        return f"pid {info['pid']} on {info['host']} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def claim(folder: str | Path, what: str = "run folder") -> Iterator[Path]:
    """Hold `folder` exclusively for the `with` block; a second claimant fails at once naming the holder.

    The lock file is removed at release (while still locked); a claimant that locked a file removed under
    it in the meantime sees another inode at the path and tries again."""
    folder = Path(folder)
    created = ensure_folder(folder, what)
    path = folder / LOCK
    fd = -1
    try:
        for _ in range(5):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise PolyrecError(f"Cannot write in the {what} {folder}: {_reason(exc)}.") from None
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PolyrecError(f"The {what} {folder} is in use by {lock_holder(folder)}. Wait for it to "
                                   "finish, or choose another folder.") from None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
            fd = -1
        if fd < 0:
            raise PolyrecError(f"Could not lock the {what} {folder}: its lock file keeps changing.")
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "command": " ".join(["polyrec", *sys.argv[1:]]),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield folder
    finally:
        if fd >= 0:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
            os.close(fd)  # closing the descriptor releases the flock
        if created:
            _remove_if_empty(folder)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only succeeds when nothing was written into it
    except OSError:
        pass


# --- the run files of a training run ---------------------------------------------------------------------
RUN_FILES = ("config.yaml", "encoders.json", "schema.yaml", "spec.json", "metrics.jsonl", "steps.jsonl", "tensorboard")


def check_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, log: Callable[[str], None] = print) -> bool:
    """Refuse to overwrite a run or to resume a different one (or from a damaged checkpoint); the caller has
    validated the config. A folder whose run never finished an epoch (config.yaml, no checkpoint, no
    metrics.json) is started again from scratch, with or without --resume. Returns whether training resumes."""
    started = (run_dir / CHECKPOINT).exists() or (run_dir / "metrics.json").exists()
    if resume and not (run_dir / CHECKPOINT).exists():
        if started or not (run_dir / "config.yaml").exists():
            raise PolyrecError(f"Cannot resume: {run_dir / CHECKPOINT} does not exist.")
        resume = False
        log(f"{run_dir}: its run never finished an epoch (no {CHECKPOINT}); starting it from epoch 1")
    if resume:
        saved = load_config(run_dir / "config.yaml")
        if saved.model_dump() != cfg.model_dump():
            raise PolyrecError(f"Cannot resume {run_dir}: its config.yaml differs from the requested config. "
                               "Resume with `polyrec train --resume --out RUN_DIR` alone.")
        check_checkpoint(run_dir / CHECKPOINT)  # a damaged checkpoint fails here, before the data is read
        return True
    if started:
        raise PolyrecError(f"{run_dir} already holds a run. Use --resume to continue it, or choose another --out.")
    for name in RUN_FILES:  # what a start that failed before its first epoch left behind
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return False


def write_run_files(run_dir: Path, cfg: RunConfig, spec: dict[str, Any], encoders: Any = None) -> None:
    """config.yaml, encoders.json and spec.json, written when everything that can fail before training has
    been built (data, model, balancer, optimiser, monitor), so a failed start leaves no half-run behind."""
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    if encoders is not None:
        encoders.save(run_dir / "encoders.json")
        # the resolved schema, readable beside config.yaml (whose paths are absolute): the run works from anywhere
        atomic_write_text(run_dir / "schema.yaml", encoders.schema_yaml())
    atomic_write_text(run_dir / "spec.json", json.dumps(spec, indent=1, default=str))

"""Fetching original dataset files: official URLs first, then a PyPI wheel that ships the same data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from polyrec.errors import PolyrecError
from polyrec.utils.io import atomic_write


def fetch_url(url: str, dest: Path, timeout: float = 20.0, log: Callable[[str], None] = print) -> Path:
    """Download `url` to `dest` atomically; raises OSError when the host cannot be reached."""
    log(f"downloading {url}")
    req = urllib.request.Request(url, headers={"User-Agent": "polyrec"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        atomic_write(dest, lambda p: shutil.copyfileobj(resp, open(p, "wb")))
    return dest


def pip_wheel(requirement: str, log: Callable[[str], None] = print) -> Path:
    """Download one wheel from the package index with pip (no install, no dependencies); returns its path."""
    tmp = Path(tempfile.mkdtemp(prefix="polyrec-wheel-"))
    log(f"fetching {requirement} from the Python package index")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(tmp), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(tmp.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise PolyrecError(f"pip could not download {requirement}: {proc.stderr.strip()[-500:]}")
    return wheels[0]


def extract_members(archive: Path, prefix: str, dest: Path) -> list[Path]:
    """Extract the files under `prefix` inside a zip (or wheel) into `dest`, flat, atomically each."""
    out = []
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                target = dest / Path(name).name
                atomic_write(target, lambda p, n=name: p.write_bytes(zf.read(n)))
                out.append(target)
    if not out:
        raise PolyrecError(f"{archive.name} holds no files under {prefix!r}")
    return out


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a whole file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(expected: dict[Path, str]) -> None:
    """Check downloaded files against known digests; a mismatch removes the file and raises."""
    for path, digest in expected.items():
        actual = sha256_file(path)
        if actual != digest:
            Path(path).unlink()
            raise PolyrecError(f"{path} failed its checksum (sha256 {actual}, expected {digest}); removed it.")

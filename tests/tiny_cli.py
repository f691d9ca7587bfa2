"""The real `polyrec` entry point with the synthetic test recipes registered, for subprocess tests.

    python tests/tiny_cli.py DATA_DIR train --dataset tiny-synthetic ...

DATA_DIR holds tiny.parquet (and tiny-onelike.parquet, whose `like` label is always 0), as written by
`register_tiny_recipes(DATA_DIR)`; tests run this file where they need a process to kill or to race.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from helpers import register_tiny_recipes

    from polyrec.cli import main as polyrec_main

    data = Path(sys.argv.pop(1))
    register_tiny_recipes(data)
    polyrec_main()


if __name__ == "__main__":
    main()

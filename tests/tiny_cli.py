"""The real `polyrec` entry point with the synthetic test recipes registered, for subprocess tests.

    python tests/tiny_cli.py DATA_DIR train --dataset tiny-synthetic ...

With TINY_CLI_HOLD_UNTIL=PATH set, training waits before epoch TINY_CLI_HOLD_EPOCH (default 1) until PATH
exists (at most 120 s): a test can then be sure this process still holds its run folder while another one
tries it, or kill it at a known point.

DATA_DIR holds tiny.parquet (and tiny-onelike.parquet, whose `like` label is always 0), as written by
`register_tiny_recipes(DATA_DIR)`; tests run this file where they need a process to kill or to race.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from helpers import register_tiny_recipes

    from polyrec.cli import main as polyrec_main

    data = Path(sys.argv.pop(1))
    register_tiny_recipes(data)
    hold = os.environ.get("TINY_CLI_HOLD_UNTIL")
    if hold:
        _hold_before_epoch(Path(hold), int(os.environ.get("TINY_CLI_HOLD_EPOCH", "1")))
    polyrec_main()


def _hold_before_epoch(release: Path, at: int) -> None:
    from polyrec.train.trainer import Trainer

    original = Trainer._train_epoch

    def held(self, table, epoch, step, progress):
        deadline = time.monotonic() + 120
        while epoch == at and not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return original(self, table, epoch, step, progress)

    Trainer._train_epoch = held


if __name__ == "__main__":
    main()

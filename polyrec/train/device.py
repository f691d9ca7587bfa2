"""Where training runs and in what precision: the accelerator path (train.device, train.precision,
train.split_on_device).

- bf16 (`train.precision=bf16`): forward passes run under torch.autocast with bfloat16 (matrix products and
  the layers autocast lists; embedding lookups, losses and metrics stay float32). bf16 keeps float32's exponent
  range, so no loss scaling is needed (unlike fp16). It works on CPU too (slower than float32 on CPUs without
  bf16 units), which is how the test suite checks it.
- Whole splits live on the accelerator when they fit (`auto`: at most half of its free memory), so a batch is
  an index gather on the device; otherwise they stay in pinned host memory and each batch is copied with
  non_blocking=True.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

DEVICE_SHARE = 0.5  # "auto": splits together may take this share of the accelerator's free memory


def autocast(device: str | torch.device, precision: str) -> Any:
    """The autocast context of `precision` on `device` (a null context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    kind = torch.device(device).type
    return torch.autocast(device_type=kind, dtype=torch.bfloat16)


def split_storage(device: str, setting: bool | str, nbytes: int) -> tuple[str, bool]:
    """(device the split's tensors are stored on, pinned) for splits of `nbytes` in all on `device`."""
    if torch.device(device).type != "cuda":
        return device, False
    if setting == "auto":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        setting = nbytes <= DEVICE_SHARE * free
    return (device, False) if setting else ("cpu", True)

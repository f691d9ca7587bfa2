"""The tensor forward both backends and the ONNX export share: a model as forward(categorical, numeric,
scenario, *sequences) -> scores, and the encoded arrays it takes by name."""

from __future__ import annotations

import numpy as np
import torch

from polyrec.data.encoders import EncodedSplit
from polyrec.data.spec import ModelSpec
from polyrec.models.base import MultiTaskModel

ONNX_TOLERANCE = 1e-5  # max abs difference of probabilities between the ONNX graph and the torch forward


def score_module(model: MultiTaskModel) -> torch.nn.Module:
    """forward(categorical, numeric, scenario, *sequences) -> scores [B, H] (sigmoid on binary heads):
    the tensor signature ONNX needs, since a graph cannot take the Batch dataclass."""
    from polyrec.data.batching import Batch

    names = list(model.spec.sequence_vocab)

    class ScoreModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("binary", torch.tensor([h.kind == "binary" for h in model.heads]))

        def forward(self, categorical: torch.Tensor, numeric: torch.Tensor, scenario: torch.Tensor,
                    *sequences: torch.Tensor) -> torch.Tensor:
            logits = self.model(Batch(categorical, numeric, dict(zip(names, sequences)), scenario)).float()
            return torch.where(self.binary, torch.sigmoid(logits), logits)

    return ScoreModule().eval()


def input_names(spec: ModelSpec) -> list[str]:
    return ["categorical", "numeric", "scenario", *(f"seq.{k}" for k in spec.sequence_vocab)]


def encoded_inputs(enc: EncodedSplit, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The ONNX graph's inputs by name, with the dtypes TensorTable uses (scenario int64, ids int32)."""
    feeds = {"categorical": np.ascontiguousarray(enc.categorical, dtype=np.int32),
             "numeric": np.ascontiguousarray(enc.numeric, dtype=np.float32),
             "scenario": np.ascontiguousarray(enc.scenario, dtype=np.int64)}
    feeds.update({f"seq.{k}": np.ascontiguousarray(enc.sequences[k], dtype=np.int32) for k in spec.sequence_vocab})
    return feeds


def torch_scores(module: torch.nn.Module, feeds: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    with torch.inference_mode():
        return module(*(torch.from_numpy(feeds[n]) for n in names)).numpy()

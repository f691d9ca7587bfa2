"""Scoring backends: one batched forward over a request's encoded rows, in torch or ONNX Runtime.

Both return scores [N, H] (probabilities for binary heads, values for regression heads) from the same
encoded arrays, so the app never knows which one runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from polyrec.data.encoders import EncodedSplit
from polyrec.errors import PolyrecError
from polyrec.serve.deps import need
from polyrec.serve.forward import ONNX_TOLERANCE, encoded_inputs, input_names, score_module, torch_scores

if TYPE_CHECKING:
    from polyrec.models.base import MultiTaskModel
    from polyrec.serve.bundle import Bundle

BACKENDS = ("torch", "onnx")


class Backend(Protocol):
    name: str

    def scores(self, enc: EncodedSplit) -> np.ndarray: ...


class TorchBackend:
    """The bundle's model in eval mode under inference_mode; threads via torch.set_num_threads (process-wide)."""

    name = "torch"

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.spec = bundle.spec
        self.module = score_module(bundle.model)
        self.names = input_names(bundle.spec)

    def scores(self, enc: EncodedSplit) -> np.ndarray:
        return torch_scores(self.module, encoded_inputs(enc, self.spec), self.names)


class OnnxBackend:
    """An ONNX Runtime CPU session on the bundle's model.onnx; threads via SessionOptions.intra_op_num_threads."""

    name = "onnx"

    def __init__(self, session: object, spec: object | None = None) -> None:
        self.session = session
        self.spec = spec
        self.inputs = [i.name for i in session.get_inputs()]  # the exporter drops inputs a model never reads

    @classmethod
    def from_path(cls, path: Path, threads: int | None, spec: object | None = None) -> "OnnxBackend":
        ort = need("onnxruntime")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        return cls(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), spec)

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["scores"], {n: feeds[n] for n in self.inputs})[0]

    def scores(self, enc: EncodedSplit) -> np.ndarray:
        return self.run_feeds(encoded_inputs(enc, self.spec))


def make_backend(bundle: Bundle, kind: str, threads: int | None = None) -> Backend:
    if kind == "torch":
        return TorchBackend(bundle, threads)
    if kind == "onnx":
        if bundle.onnx_path is None:
            raise PolyrecError(f"Bundle {bundle.path} has no {'model.onnx'}: re-export it with `polyrec export "
                               "--onnx`, or serve it with --backend torch.")
        return OnnxBackend.from_path(bundle.onnx_path, threads, bundle.spec)
    raise PolyrecError(f"Unknown backend {kind!r}; use one of {', '.join(BACKENDS)}.")


def onnx_parity(model: "MultiTaskModel", path: Path, enc: EncodedSplit) -> dict[str, Any]:
    """Max abs difference between ONNX Runtime and the torch forward on the same encoded rows."""
    feeds = encoded_inputs(enc, model.spec)
    ref = torch_scores(score_module(model), feeds, input_names(model.spec))
    got = OnnxBackend.from_path(path, threads=None).run_feeds(feeds)
    diff = float(np.max(np.abs(ref - got))) if len(ref) else 0.0
    return {"rows": int(len(ref)), "max_abs_diff": diff, "tolerance": ONNX_TOLERANCE, "ok": diff <= ONNX_TOLERANCE}

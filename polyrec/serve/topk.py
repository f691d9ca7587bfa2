"""Top-K bundles and POST /v1/models/{name}/recommend: user -> the best K items, excluding those already seen.

A top-K bundle stores what ranking needs and nothing of the model's code path, so recommending is numpy:
  bundle.json         format, kind "topk", name, model, scorer ("dot" or "matrix"), counts, versions
  ids.json            raw user ids, item ids and titles (index order)
  topk.safetensors    dot:    user [U, D] and item [I, D] representations (score = <user, item>)
                      matrix: scores [U, I], the model's own scorer run once for every pair (models that are
                              not a dot product, e.g. WAATA or a CTR model adapted to top-K), only when
                              U * I <= MAX_MATRIX_FLOATS
                      seen_indptr [U + 1], seen_items: every user's items in the train/val/test splits (CSR)
  metrics.json        the run's final metrics
No ONNX graph: a dot product (or a row lookup) in numpy is the whole scorer.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polyrec import __version__
from polyrec.errors import PolyrecError, close_matches
from polyrec.utils.io import atomic_directory, atomic_write_text, read_json

TOPK_FILES = ("bundle.json", "ids.json", "topk.safetensors", "metrics.json")
MAX_MATRIX_FLOATS = 50_000_000
MAX_K = 1000


def export_topk_bundle(run_dir: Path, out: Path, name: str | None = None,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export a finished top-K run (spec.json kind "topk") to a bundle folder `out`; returns bundle.json."""
    from safetensors.numpy import save_file

    from polyrec.serve.bundle import BUNDLE_FORMAT, _fingerprints
    from polyrec.topk.models.base import DotProductModel
    from polyrec.topk.run import load_topk_run

    run = load_topk_run(run_dir, log=log)
    data, model = run.data, run.model
    spec_info = read_json(run_dir / "spec.json")
    n_users, n_items = len(data.user_ids), len(data.item_ids)
    with torch.inference_mode():
        cache = model.encode()
        if isinstance(model, DotProductModel):
            users, items = model.tables(cache)
            tensors = {"user": users.float().numpy(), "item": items.float().numpy()}
            scorer = "dot"
        elif n_users * n_items <= MAX_MATRIX_FLOATS:
            step = max(1, 1_000_000 // max(n_items, 1))
            tensors = {"scores": np.concatenate([
                model.score_all(torch.arange(a, min(a + step, n_users)), cache).float().numpy()
                for a in range(0, n_users, step)])}
            scorer = "matrix"
        else:
            raise PolyrecError(f"Model {spec_info['model']!r} is not a dot-product model and its score matrix "
                               f"({n_users:,} users x {n_items:,} items) is over the {MAX_MATRIX_FLOATS:,} floats "
                               "a top-K bundle stores.")
    indptr, seen = seen_csr(data, n_users)
    tensors.update(seen_indptr=indptr, seen_items=seen)
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
    info: dict[str, Any] = {
        "format": BUNDLE_FORMAT, "kind": "topk", "name": name or out.name, "model": spec_info["model"],
        "dataset": data.dataset, "scorer": scorer, "users": n_users, "items": n_items,
        "target": data.task_names[0], "source_run": str(run_dir.resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"polyrec": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "data": _fingerprints(spec_info), "onnx": None,
    }

    def build(tmp: Path) -> None:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / "topk.safetensors"))
        atomic_write_text(tmp / "ids.json", json.dumps({"user_ids": [str(u) for u in data.user_ids],
                                                        "item_ids": [str(i) for i in data.item_ids],
                                                        "item_titles": list(data.item_titles)}))
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=1))
        atomic_write_text(tmp / "bundle.json", json.dumps(info, indent=1))

    atomic_directory(out, build)
    return info


def seen_csr(data: Any, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (user, item) of the train/val/test splits as CSR arrays: user u's items are
    seen_items[indptr[u]:indptr[u + 1]] (sorted, unique)."""
    users = np.concatenate([np.asarray(s.user, np.int64) for s in data.splits.values()])
    items = np.concatenate([np.asarray(s.item, np.int64) for s in data.splits.values()])
    pairs = np.unique(np.stack([users, items], 1), axis=0) if len(users) else np.zeros((0, 2), np.int64)
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(pairs[:, 0], minlength=n_users), out=indptr[1:])
    return indptr, pairs[:, 1].astype(np.int64)


@dataclass
class TopKBundle:
    """A loaded top-K bundle: ids, representations (or scores) and seen items, all numpy."""

    path: Path
    info: dict[str, Any]
    user_ids: list[str]
    item_ids: np.ndarray
    item_titles: np.ndarray
    tensors: dict[str, np.ndarray]
    metrics: dict[str, Any]

    def __post_init__(self) -> None:
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}

    @property
    def name(self) -> str:
        return self.info["name"]

    def user(self, user_id: int | str) -> int:
        """The user's index; an unknown user is a RequestError 404 naming it."""
        from polyrec.serve.responses import RequestError

        u = self.user_index.get(str(user_id))
        if u is None:
            raise RequestError(404, f"Unknown user {str(user_id)!r} for model {self.name!r}."
                                    f"{close_matches(str(user_id), self.user_ids[:100_000])} Users are ids like "
                                    f"{', '.join(self.user_ids[:3])}.")
        return u

    def scores(self, u: int) -> np.ndarray:
        """Ranking scores of every item for user index u (float32 [I])."""
        if self.info["scorer"] == "dot":
            return self.tensors["item"] @ self.tensors["user"][u]
        return self.tensors["scores"][u].copy()

    def recommend(self, user_id: int | str, k: int, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Item indices and scores of the best k items, best first (ties by item index)."""
        u = self.user(user_id)
        s = self.scores(u).astype(np.float32, copy=True)
        if exclude_seen:
            ptr = self.tensors["seen_indptr"]
            s[self.tensors["seen_items"][ptr[u]:ptr[u + 1]]] = -np.inf
        k = min(k, int(np.isfinite(s).sum()))
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        top = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
        top = top[np.lexsort((top, -s[top]))]
        return top, s[top]

    def metadata(self) -> dict[str, Any]:
        from polyrec.serve.responses import metrics_summary

        i = self.info
        return {"name": i["name"], "kind": "topk", "model": i["model"], "dataset": i.get("dataset"),
                "scorer": i["scorer"], "users": i["users"], "items": i["items"], "target": i.get("target"),
                "max_k": MAX_K, "metrics": metrics_summary(self.metrics), "versions": i.get("versions")}


def load_topk_bundle(path: Path, info: dict[str, Any]) -> TopKBundle:
    from safetensors.numpy import load_file

    for fname in TOPK_FILES:
        if not (path / fname).exists():
            raise PolyrecError(f"{path} is not a complete top-K bundle: {fname} is missing.")
    ids = read_json(path / "ids.json")
    tensors = load_file(str(path / "topk.safetensors"))
    want = ("user", "item") if info.get("scorer") == "dot" else ("scores",)
    missing = [k for k in (*want, "seen_indptr", "seen_items") if k not in tensors]
    if missing:
        raise PolyrecError(f"{path}: topk.safetensors lacks {missing}; re-export the bundle.")
    return TopKBundle(path, info, ids["user_ids"], np.array(ids["item_ids"], dtype=object),
                      np.array(ids["item_titles"], dtype=object), tensors, read_json(path / "metrics.json"))


def add_recommend_route(app: Any, b: TopKBundle) -> None:
    """POST /v1/models/{name}/recommend for one top-K bundle."""
    from typing import Annotated, Union

    from fastapi.responses import Response
    from pydantic import ConfigDict, Field, create_model

    from polyrec.serve.responses import dumps
    from polyrec.serve.routes import JsonBodyRoute

    p = "".join(w.title() for w in b.name.replace("-", "_").split("_") if w) or "Model"
    req_model = create_model(
        f"{p}RecommendRequest", __config__=ConfigDict(extra="forbid"),
        user_id=(Union[int, str], Field(..., description="raw user id, as in the training data")),
        k=(Annotated[int, Field(ge=1, le=MAX_K)], Field(10, description=f"how many items (1..{MAX_K})")),
        exclude_seen=(bool, Field(True, description="leave out items the user rated in any split")))
    item = create_model(f"{p}RecommendedItem", item_id=(str, ...), title=(str, ...), score=(float, ...))
    resp_model = create_model(f"{p}RecommendResponse", model=(str, ...), user_id=(str, ...),
                              items=(list[item], Field(..., description="best first")))

    def recommend(request: Any) -> Response:
        top, scores = b.recommend(request.user_id, request.k, request.exclude_seen)
        items = [{"item_id": i, "title": t, "score": s} for i, t, s in
                 zip(b.item_ids[top].tolist(), b.item_titles[top].tolist(), scores.astype(np.float64).tolist())]
        return Response(dumps({"model": b.name, "user_id": str(request.user_id), "items": items}),
                        media_type="application/json")

    recommend.__annotations__["request"] = req_model
    app.router.add_api_route(f"/v1/models/{b.name}/recommend", recommend, methods=["POST"],
                             response_model=resp_model, responses={404: {"description": "unknown user"}},
                             summary=f"Top-K items for a user, seen items excluded ({b.name})",
                             operation_id=f"recommend_{b.name}", route_class_override=JsonBodyRoute)

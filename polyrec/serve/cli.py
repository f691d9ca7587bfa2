"""The `polyrec export` command's work, kept out of polyrec/cli.py so that file stays a thin front."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from polyrec.errors import PolyrecError


def parse_weights(text: str | None) -> dict[str, float] | None:
    """'click=1,like=0.5' -> {'click': 1.0, 'like': 0.5}."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise PolyrecError(f"--weights: {part!r} is not HEAD=NUMBER (e.g. click=1,like=0.5).")
    return out


def export_command(run_dir: Path, out: Path, onnx: bool, rows: Path | None, name: str | None, fusion: str,
                   weights: str | None, log: Callable[[str], None]) -> None:
    from pydantic import ValidationError

    from polyrec.serve.bundles import export_bundle
    from polyrec.serve.fusion import Fusion

    try:
        spec = Fusion(method=fusion, weights=parse_weights(weights)).model_dump()  # type: ignore[arg-type]
    except ValidationError:
        raise PolyrecError(f"--fusion must be product or sum and --weights non-negative, got {fusion!r}, {weights!r}.") from None
    if rows is not None:  # read as `polyrec predict` reads its input: ids as strings, the training read options
        from polyrec.serve.predict import read_input
        from polyrec.train.run import load_run

        table = read_input(load_run(run_dir), rows)
    else:
        table = None
    info = export_bundle(run_dir, out, onnx=onnx, rows=table, name=name, fusion=spec, log=log)
    if info.get("kind") == "topk":
        log(f"top-K bundle {info['name']!r} ({info['model']}, {info['scorer']} scorer, {info['users']} users, "
            f"{info['items']} items) written to {out}")
    else:
        log(f"bundle {info['name']!r} ({info['model']}, heads {[h['name'] for h in info['heads']]}) written to {out}")
    if info["onnx"]:
        log(f"model.onnx: max |p_onnx - p_torch| = {info['onnx']['max_abs_diff']:.2e} on {info['onnx']['rows']} rows")
    log(f"serve it: polyrec serve {out}")

"""Optional serving dependencies: a missing one is a one-line user error, not an ImportError traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from polyrec.errors import PolyrecError


def need(module: str) -> ModuleType:
    """Import `module` (fastapi, uvicorn, onnx, onnxruntime, httpx) or say how to install the serve extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PolyrecError(f"Serving needs the optional package {module.split('.')[0]!r}: "
                           'pip install "polyrec[serve]"') from None

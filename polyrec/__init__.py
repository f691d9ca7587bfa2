"""polyrec: multi-task, multi-scenario recommendation."""

from polyrec.errors import PolyrecError

__version__ = "0.1.0"
__all__ = ["PolyrecError", "__version__"]

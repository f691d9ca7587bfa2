"""User-facing errors: one exception type the CLI prints without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PolyrecError(Exception):
    """An error caused by the user's input (data, config, request), with a message that says how to fix it."""


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' Did you mean ...?' suffix for unknown names, or '' when nothing is close."""
    matches = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> PolyrecError:
    choices = sorted(choices)
    return PolyrecError(
        f"Unknown {kind} {name!r}.{close_matches(name, choices)} Available: {', '.join(choices)}."
    )

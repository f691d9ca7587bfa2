"""Name -> class registries (models, top-K models, balancers) filled by a class decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", bound=type)


def registrar(registry: dict[str, T], kind: str) -> Callable[[str], Callable[[T], T]]:
    """`register = registrar(MODELS, "model")`; then `@register("mmoe")` on a class adds it under that name
    (and sets `cls.registry_name`). A name registered twice is a programming error, raised at import."""

    def register(name: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            if name in registry:
                raise ValueError(f"{kind} {name!r} registered twice")
            registry[name] = cls
            cls.registry_name = name
            return cls

        return deco

    return register

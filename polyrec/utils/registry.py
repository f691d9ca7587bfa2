"""One by-name registry for models, top-K models, balancers and dataset recipes.

A `Registry` is a dict (name -> class, or name -> instance for recipes) so existing code that iterates,
indexes or monkeypatches it keeps working, plus what every registry needs and none had twice:
`register(name)` refuses a name registered twice, `get(name)` fails with the `unknown_name` error (close
matches, the available names), and third-party code can register through an entry-point group, loaded
once on the first lookup miss or listing.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from typing import Any, Generic, TypeVar

from polyrec.errors import PolyrecError, unknown_name

V = TypeVar("V")
C = TypeVar("C", bound=type)
_MISSING: Any = object()


class Registry(dict[str, V], Generic[V]):
    """name -> registered object. `kind` names the thing in errors ("model", "dataset").

    `make` turns a registered class into the stored value (recipes store an instance; default: the class).
    `builtins`: a module path imported (by name) on first use, whose import registers the built-in entries;
    the base module that holds the registry then never imports the subclasses that import it.
    `entry_point_group`: each entry point of that group is a module (importing it registers its classes)
    or a class (registered under the entry point's name); they are loaded once, when a name is missing
    or the registry is listed, so a plain built-in lookup never imports plugins.
    """

    def __init__(self, kind: str, *, make: Callable[[type], V] | None = None,
                 entry_point_group: str | None = None, builtins: str | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.make = make
        self.entry_point_group = entry_point_group
        self.builtins = builtins  # the package whose import registers the built-in entries (by name: no cycle)
        self._plugins_loaded = entry_point_group is None

    # --- registering ----------------------------------------------------------------------------------
    def add(self, name: str, value: V) -> V:
        """Store `value` under `name`; a name registered twice is a programming error, raised at import."""
        if dict.__contains__(self, name):
            raise ValueError(f"{self.kind} {name!r} registered twice")
        dict.__setitem__(self, name, value)
        return value

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: `@MODELS.register("mmoe")` stores the class (or `make(cls)`) under that name
        and sets `cls.registry_name`."""

        def deco(cls: C) -> C:
            self.add(name, self.make(cls) if self.make else cls)
            cls.registry_name = name
            return cls

        return deco

    # --- looking up -----------------------------------------------------------------------------------
    def get(self, name: str, default: Any = _MISSING) -> V:  # type: ignore[override]
        """The object registered as `name`; PolyrecError with close matches if there is none. With a
        `default` it behaves as dict.get (returns the default instead)."""
        self._load_builtins()
        if name in self:
            return dict.__getitem__(self, name)
        if default is not _MISSING:
            return default
        raise unknown_name(self.kind, name, self)

    def __missing__(self, name: str) -> V:
        self._load_builtins()
        if dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        if self._load_plugins() and dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return dict.__contains__(self, name) or (self._load_plugins() and dict.__contains__(self, name))

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load_plugins()
        return dict.__len__(self)

    def keys(self) -> KeysView[str]:
        self._load_plugins()
        return dict.keys(self)

    def values(self) -> ValuesView[V]:
        self._load_plugins()
        return dict.values(self)

    def items(self) -> ItemsView[str, V]:
        self._load_plugins()
        return dict.items(self)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(dict.keys(self))})"

    # --- built-ins and plugins --------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        if self.builtins is not None:
            module, self.builtins = self.builtins, None  # first: the import registers through this registry
            importlib.import_module(module)

    def _load_plugins(self) -> bool:
        """Load the entry-point group once; True when this call loaded something new."""
        self._load_builtins()
        if self._plugins_loaded:
            return False
        self._plugins_loaded = True  # first, so a plugin module that looks names up does not recurse
        before = dict.__len__(self)
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
            except Exception as exc:
                raise PolyrecError(f"Could not load {self.kind} plugin {ep.name!r} ({ep.value}, entry-point "
                                   f"group {self.entry_point_group!r}): {type(exc).__name__}: {exc}") from exc
            if inspect.ismodule(obj):
                continue  # importing it ran its @register decorators
            if not isinstance(obj, type):
                raise PolyrecError(f"{self.kind} plugin {ep.name!r} ({ep.value}) is neither a module nor a class.")
            if not self._holds(ep.name, obj):
                self.register(ep.name)(obj)
        return dict.__len__(self) > before

    def _holds(self, name: str, cls: type) -> bool:
        """Whether `cls` is already registered as `name` (a module's decorator ran before its entry point)."""
        if not dict.__contains__(self, name):
            return False
        value = dict.__getitem__(self, name)
        return value is cls or type(value) is cls


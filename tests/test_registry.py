"""The one Registry class behind models, top-K models, balancers and recipes; the one params validator."""

from __future__ import annotations

import types

import pytest
from pydantic import BaseModel, ConfigDict, Field

from polyrec.balance import BALANCERS, balancer_params
from polyrec.data.schema import validate_params
from polyrec.errors import PolyrecError
from polyrec.models import MODELS
from polyrec.models.base import model_params
from polyrec.recipes import RECIPES, Recipe, get_recipe
from polyrec.topk.models import TOPK_MODELS, topk_model_params
from polyrec.utils.registry import Registry


def test_every_registry_is_a_registry():
    for reg, kind in ((MODELS, "model"), (TOPK_MODELS, "top-K model"), (BALANCERS, "balancer"),
                      (RECIPES, "dataset")):
        assert isinstance(reg, Registry) and reg.kind == kind and len(reg) > 0
    assert RECIPES.entry_point_group == "polyrec.recipes"
    assert all(isinstance(r, Recipe) for r in RECIPES.values())  # recipes store instances


def test_register_get_and_duplicates():
    reg: Registry[type] = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        pass

    assert reg["alpha"] is Alpha and reg.get("alpha") is Alpha and Alpha.registry_name == "alpha"
    assert list(reg) == ["alpha"]
    with pytest.raises(ValueError, match="widget 'alpha' registered twice"):
        reg.register("alpha")(type("Other", (), {}))
    with pytest.raises(PolyrecError, match=r"Unknown widget 'alpah'\. Did you mean 'alpha'\? Available: alpha"):
        reg.get("alpah")
    assert reg.get("nope", None) is None  # with a default it is dict.get
    with pytest.raises(KeyError):
        reg["nope"]


def test_real_registries_refuse_duplicates_and_name_close_matches():
    with pytest.raises(ValueError, match="registered twice"):
        MODELS.register("mmoe")(type("Fake", (), {}))
    with pytest.raises(PolyrecError, match="Did you mean 'mmoe'"):
        MODELS.get("mmeo")
    with pytest.raises(PolyrecError, match="Unknown dataset"):
        get_recipe("census-incme")


class _EP:
    def __init__(self, name: str, value: str, obj: object) -> None:
        self.name, self.value, self._obj = name, value, obj

    def load(self) -> object:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def _fake_entry_points(monkeypatch, eps: list[_EP], calls: list[str]) -> None:
    def entry_points(*, group: str):
        calls.append(group)
        return eps if group == "test.plugins" else []

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)


def test_entry_points_load_once_on_a_miss_as_a_class_or_a_module(monkeypatch):
    reg: Registry[object] = Registry("widget", make=lambda cls: cls(), entry_point_group="test.plugins")

    @reg.register("builtin")
    class Builtin:
        pass

    class FromClass:
        pass

    module = types.ModuleType("fake_plugin_module")

    def import_module() -> object:  # a module entry point registers its classes by being imported
        reg.register("from-module")(type("M", (), {}))
        return module

    calls: list[str] = []
    eps = [_EP("from-class", "pkg:FromClass", FromClass), _EP("mod", "pkg.mod", module)]
    eps[1].load = import_module  # type: ignore[method-assign]
    _fake_entry_points(monkeypatch, eps, calls)

    assert isinstance(reg.get("builtin"), Builtin) and calls == []  # a hit does not load plugins
    assert isinstance(reg.get("from-class"), FromClass) and calls == ["test.plugins"]
    assert FromClass.registry_name == "from-class"
    assert sorted(reg) == ["builtin", "from-class", "from-module"]
    with pytest.raises(PolyrecError, match="Unknown widget 'missing'"):
        reg.get("missing")
    assert calls == ["test.plugins"]  # loaded once


def test_listing_loads_entry_points_and_a_broken_plugin_is_named(monkeypatch):
    reg: Registry[type] = Registry("widget", entry_point_group="test.plugins")

    class Plugin:
        pass

    calls: list[str] = []
    _fake_entry_points(monkeypatch, [_EP("plug", "pkg:Plugin", Plugin)], calls)
    assert list(reg.items()) == [("plug", Plugin)] and calls == ["test.plugins"]

    broken: Registry[type] = Registry("widget", entry_point_group="test.plugins")
    _fake_entry_points(monkeypatch, [_EP("bad", "pkg:Bad", ImportError("no module named pkg"))], [])
    with pytest.raises(PolyrecError, match="Could not load widget plugin 'bad' .*no module named pkg"):
        "x" in broken


def test_recipes_registry_reads_the_polyrec_recipes_group(monkeypatch):
    class PluginRecipe(Recipe):
        name = "plugin-recipe"
        description = "a third-party recipe"
        folder = "plugin"

        def locate(self, root):
            return {}

        def download(self, root, log):
            pass

        def load(self, files, options):
            raise NotImplementedError

    seen: list[str] = []

    def entry_points(*, group: str):
        seen.append(group)
        return [_EP("plugin-recipe", "pkg:PluginRecipe", PluginRecipe)] if group == "polyrec.recipes" else []

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    monkeypatch.setattr(RECIPES, "_plugins_loaded", False)
    try:
        assert isinstance(get_recipe("plugin-recipe"), PluginRecipe) and seen == ["polyrec.recipes"]
    finally:
        dict.pop(RECIPES, "plugin-recipe", None)


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_experts: int = Field(2, ge=1)


def test_one_params_validator_for_models_topk_models_and_balancers():
    assert validate_params(_P, {"n_experts": 3}, "x").n_experts == 3
    with pytest.raises(PolyrecError, match=r"Invalid parameters for toy: unknown key 'n_expert'\. Did you mean "
                                           r"'n_experts'"):
        validate_params(_P, {"n_expert": 3}, "parameters for toy")
    with pytest.raises(PolyrecError, match="Invalid parameters for model 'mmoe': unknown key 'n_expert'"):
        model_params("mmoe", {"n_expert": 3})
    with pytest.raises(PolyrecError, match="Invalid parameters for model 'mf': unknown key"):
        topk_model_params("mf", {"bogus": 1})
    with pytest.raises(PolyrecError, match="Invalid balance_params for 'dwa': unknown key"):
        balancer_params("dwa", {"bogus": 1})

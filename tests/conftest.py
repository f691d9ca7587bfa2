"""Shared test setup.

* POLYREC_DATA points at the real datasets in ``<repo>/../shared/data`` when that directory exists
  (otherwise the environment is left alone and tests that need real files skip, naming the reason).
* POLYREC_CACHE always points at a session-scoped temp dir, so tests never touch ~/.cache.
  polyrec reads both at call time (polyrec.settings), so setting them at session start is enough.
* torch runs on 2 threads; every test seeds what it draws.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def polyrec_env(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    if SHARED_DATA.is_dir():
        mp.setenv("POLYREC_DATA", str(SHARED_DATA))
    mp.setenv("POLYREC_CACHE", str(tmp_path_factory.mktemp("polyrec-cache")))
    yield
    mp.undo()


@pytest.fixture
def ml100k_files():
    from helpers import require_dataset

    require_dataset("movielens-100k")


# --- a tiny synthetic recipe (3 scenarios x 2 tasks), fast enough for trainer/cache tests ---------
@pytest.fixture(scope="session")
def tiny_table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import write_tiny_table

    return write_tiny_table(tmp_path_factory.mktemp("tiny-data") / "tiny.parquet")


@pytest.fixture
def tiny_recipe(tiny_table_path, monkeypatch):
    """Registers the synthetic recipe 'tiny-synthetic' for the duration of one test."""
    from helpers import TinyRecipe

    from polyrec.data.recipe import RECIPES

    recipe = TinyRecipe(tiny_table_path)
    monkeypatch.setitem(RECIPES, recipe.name, recipe)
    return recipe


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory):
    """A folder with the tiny recipes' files (for subprocess tests through tests/tiny_cli.py), the recipes
    registered in this process for the module."""
    from helpers import register_tiny_recipes

    from polyrec.data.recipe import RECIPES

    folder = tmp_path_factory.mktemp("tiny-data")
    recipes = register_tiny_recipes(folder)
    yield folder
    for name in recipes:
        RECIPES.pop(name, None)

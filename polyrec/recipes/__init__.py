"""Dataset recipes, registered by name (`polyrec datasets list`)."""

from polyrec.recipes import aliccp, aliexpress, census, files, kuairand, mooc, movielens  # noqa: F401  (registers the recipes)
from polyrec.data.recipe import RECIPES, RawData, Recipe, register_recipe
from polyrec.data.prepare import PreparedData, get_recipe, prepare

__all__ = ["RECIPES", "PreparedData", "RawData", "Recipe", "get_recipe", "prepare", "register_recipe"]

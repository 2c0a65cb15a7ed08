"""``plmkit reproduce``: the registry of reproduction recipes and the runner."""
from .registry import RECIPES, Recipe, RecipeContext, recipe, run_recipes


def available() -> dict[str, Recipe]:
    from .registry import _load_builtin

    _load_builtin()
    return RECIPES


__all__ = ["RECIPES", "Recipe", "RecipeContext", "available", "recipe", "run_recipes"]

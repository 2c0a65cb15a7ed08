"""``plmkit reproduce``: the registry of reproduction recipes (discovered, one module each) and the runner."""
from .registry import (
    RECIPES,
    Budgets,
    Recipe,
    RecipeContext,
    environment,
    get_recipe,
    load_recipes,
    recipe,
    run_recipe,
    run_recipes,
)

available = load_recipes  # older name

__all__ = ["RECIPES", "Budgets", "Recipe", "RecipeContext", "available", "environment", "get_recipe",
           "load_recipes", "recipe", "run_recipe", "run_recipes"]

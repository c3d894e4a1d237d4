"""Recipes: one YAML file describes a whole run (model, alignment, steering, evaluate, report, publish).

``python -m recipes.run surgical`` runs the shipped ``recipes/configs/surgical.yaml``; see
:mod:`recipes.schema` for the fields and :mod:`recipes.run` for the CLI. Importing this package
does not import torch.
"""

from .plan import Plan, make_plan
from .schema import Recipe, RecipeError, recipe_from_dict
from .validate import find_recipe, load_recipe, shipped_recipes, validate_recipe

__all__ = ["Plan", "Recipe", "RecipeError", "find_recipe", "load_recipe", "make_plan", "recipe_from_dict",
           "shipped_recipes", "validate_recipe"]

"""Only what pyproject.toml cannot say: the top-level recipes/ and eval/ folders ship inside the package as
vispre/_recipes and vispre/_eval_recipes (package data, with their sub-folders and relative _base_ includes),
so an installed vispre finds them (vispre.utils.recipe_files). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

RECIPES = {"vispre._recipes": "recipes", "vispre._eval_recipes": "eval"}

setup(packages=find_packages(include=["vispre", "vispre.*"]) + list(RECIPES),
      package_dir=RECIPES,
      package_data={name: ["*.yaml", "**/*.yaml"] for name in RECIPES})

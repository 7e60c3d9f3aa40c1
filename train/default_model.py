"""Moved: `python -m recipes.default_model`."""
from train._moved import moved

moved("train.default_model", "python -m recipes.default_model", "recipes.default_model", run=__name__ == "__main__")

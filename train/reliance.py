"""Moved: `python -m recipes.reliance`."""
from train._moved import moved

moved("train.reliance", "python -m recipes.reliance", "recipes.reliance", run=__name__ == "__main__")

"""Moved: `python -m recipes.learnability`."""
from train._moved import moved

moved("train.learnability", "python -m recipes.learnability", "recipes.learnability", run=__name__ == "__main__")

"""Moved: `python -m recipes.tokenizer`."""
from train._moved import moved

moved("train.tokenizer", "python -m recipes.tokenizer", "recipes.tokenizer", run=__name__ == "__main__")

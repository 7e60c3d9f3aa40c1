"""Moved: `python -m synth`."""
from train._moved import moved

moved("train.synth", "python -m synth", "synth.dataset", run=__name__ == "__main__")

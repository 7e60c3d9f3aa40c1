"""Moved: `python -m synth.eval`."""
from train._moved import moved

moved("train.eval", "python -m synth.eval", "synth.eval", run=__name__ == "__main__")

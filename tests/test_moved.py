"""The old `python -m train.<name>` entry points fail loudly and name the command that
replaced them; importing them names the new module."""

import importlib
import subprocess
import sys

import pytest

MOVED = {"synth": "python -m synth", "eval": "python -m synth.eval",
         "default_model": "python -m recipes.default_model", "reliance": "python -m recipes.reliance",
         "learnability": "python -m recipes.learnability", "tokenizer": "python -m recipes.tokenizer"}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_command_exits_2_naming_the_new_one(old):
    done = subprocess.run([sys.executable, "-m", f"train.{old}", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert f"use `{MOVED[old]}`" in done.stderr


def test_old_module_import_names_the_new_module():
    with pytest.raises(ImportError, match="train.synth has moved to synth.dataset"):
        importlib.import_module("train.synth")

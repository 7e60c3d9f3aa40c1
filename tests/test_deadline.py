"""recipes.deadline: `--deadline` stops the step-bounded stages (reading, copying, training) early
enough that the eval, ship and pack still happen, records what it cut, and changes nothing when
it is unset or far off."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recipes import deadline
from recipes.deadline import Deadline, reading_budget
from recipes.default_model import main
from recipes.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_stopper_stops_when_one_more_step_would_end_inside_the_reserve(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(deadline.time, "monotonic", lambda: now[0])
    stop = Deadline(end=200.0, reserve_s=50.0).stopper()  # the stages must end by 150
    answers = []
    for t in (110.0, 130.0, 145.0):  # steps of 20 then 15 s: the next would end at 150, then 160
        now[0] = t
        answers.append(stop())
    assert answers == [False, False, True]
    late = Deadline(end=200.0, reserve_s=50.0).stopper()
    now[0] = 151.0
    assert late()  # past the stop with no step timed yet


def test_a_reading_budget_gets_no_more_minutes_than_are_left(monkeypatch):
    monkeypatch.setattr(deadline.time, "monotonic", lambda: 100.0)
    soon = Deadline(end=220.0, reserve_s=60.0)  # 60 s left to stop at
    assert reading_budget(steps=None, minutes=2.0, deadline=None) == {"minutes": 2.0}
    assert reading_budget(steps=500, minutes=2.0, deadline=None) == {"steps": 500}
    assert reading_budget(steps=None, minutes=2.0, deadline=soon) == {"minutes": 1.0}
    assert reading_budget(steps=None, minutes=0.5, deadline=soon) == {"minutes": 0.5}
    assert reading_budget(steps=500, minutes=2.0, deadline=soon) == {"steps": 500, "minutes": 1.0}
    assert reading_budget(steps=None, minutes=2.0, deadline=Deadline(end=150.0, reserve_s=60.0)) == {"minutes": 0.0}


@pytest.mark.parametrize(("flags", "message"), [
    (["--deadline", "0"], "--deadline 0: expected a positive number of minutes"),
    (["--deadline", "-3"], "--deadline -3: expected a positive number of minutes"),
    (["--deadline", "nan"], "--deadline nan: expected a positive number of minutes"),
    (["--deadline", "1", "--deadline-reserve-s", "60"], "--deadline-reserve-s 60: expected 0 or more seconds, fewer "
                                                        "than the 60 of --deadline 1"),
    (["--deadline", "1", "--deadline-reserve-s", "-1"], "--deadline-reserve-s -1: expected 0 or more seconds"),
])
def test_bad_deadlines_are_refused_naming_the_value(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(["--out", str(tmp_path / "model"), "--work", str(tmp_path / "work"), *flags])
    assert not (tmp_path / "work").exists()  # refused before any stage ran


def test_the_copying_stage_stops_at_a_passed_deadline_and_a_far_one_changes_none_of_its_steps(tmp_path):
    from recipes.stages import make_processor, stage_result, write_config
    from recipes.start import make_start
    from vlm import VLM

    recipe = Recipe(size="tiny", samples=0, ui_samples=8, kinds="grounding", steps=1, batch_size=4,
                    retrain_tokenizer=False, reading_minutes=0, copying_steps=3)
    limits = {"unset": None, "far": Deadline(end=time.monotonic() + 3600, reserve_s=60),
              "passed": Deadline(end=time.monotonic(), reserve_s=60)}
    starts, budgets = {}, {}
    for name, limit in limits.items():
        work = tmp_path / name
        config = write_config(recipe, make_processor(recipe, work, corpus=work / "unused"))
        make_start(recipe, work, config, device="cpu", workers=0, deadline=limit)
        budgets[name] = stage_result(work, "copying")["budget"]
        starts[name] = VLM.from_pretrained(work / "start").model.state_dict()
    assert budgets["unset"] == budgets["far"] == {"planned_steps": 3, "done_steps": 3, "cut_by_deadline": False}
    assert budgets["passed"] == {"planned_steps": 3, "done_steps": 1, "cut_by_deadline": True}
    assert all(torch.equal(tensor, starts["far"][key]) for key, tensor in starts["unset"].items())


@pytest.mark.slow
def test_a_deadline_too_short_for_the_plan_still_ships_and_packs_a_checkpoint_that_loads(tmp_path):
    """Reached before the first stage: reading, copying, grounding and training each do one step of their
    plan, the record and the card say the deadline cut them, and the pack loads. The same command
    again reuses the cut stages: nothing retrains and the record says the same."""
    from recipes.pack import unpack
    from vlm import VLM

    out, work, packed = tmp_path / "model", tmp_path / "work", tmp_path / "OUT"
    command = [sys.executable, "-m", "recipes.default_model", "--device", "cpu", "--size", "tiny", "--samples", "0",
               "--ui-samples", "8", "--kinds", "grounding,read", "--keep-tokenizer", "--reading-steps", "5",
               "--copying-steps", "5", "--ground-steps", "5", "--steps", "20", "--batch-size", "4", "--eval", "browserless", "--eval-n", "2",
               "--workers", "1", "--out", str(out), "--work", str(work), "--pack", str(packed), "--no-progress",
               "--deadline", "0.01", "--deadline-reserve-s", "0"]  # 0.6 s: gone before the imports are
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]

    record = json.loads((packed / "eval.json").read_text())
    assert record["budgets"] == {"reading": {"planned_steps": 5, "done_steps": 1, "cut_by_deadline": True},
                                 "copying": {"planned_steps": 5, "done_steps": 1, "cut_by_deadline": True},
                                 "grounding": {"planned_steps": 5, "done_steps": 1, "cut_by_deadline": True},
                                 "training": {"planned_steps": 20, "done_steps": 1, "cut_by_deadline": True}}
    assert json.loads((work / "plan.json").read_text())["steps"] == 20  # the plan stays the plan
    assert record["results"]["ui_grounding"]["n"] == 2 and "ui_read" in record["reliance"]  # the eval ran
    card = " ".join((out / "README.md").read_text().split())
    assert ("deadline (`--deadline`) cut short reading after 1 of 5 planned steps; copying after 1 of 5 planned "
            "steps; grounding after 1 of 5 planned steps; training after 1 of 20 planned steps") in card
    unpack(packed, tmp_path / "back")
    trained = VLM.from_pretrained(work / "run").model.state_dict()
    loaded = VLM.from_pretrained(tmp_path / "back").model.state_dict()
    assert loaded.keys() == trained.keys() and all(torch.equal(loaded[k], trained[k]) for k in trained)

    weights = work / "run" / "model.safetensors"
    trained_at = weights.stat().st_mtime_ns
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]
    assert weights.stat().st_mtime_ns == trained_at  # the cut training is finished, not resumed
    assert json.loads((packed / "eval.json").read_text())["budgets"] == record["budgets"]

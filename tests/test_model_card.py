"""The default model's card: targets against measurements, the recipe's own data and thinking."""

import dataclasses

from recipes.first_use import BUTTONS, PAGES, Asked, FirstUse
from recipes.model_card import model_card, target_rows
from recipes.recipe import Recipe, model_config


def _result(correct_total: dict[str, tuple[int, int]]) -> dict:
    correct = sum(c for c, _ in correct_total.values())
    total = sum(t for _, t in correct_total.values())
    return {"accuracy": correct / total, "n": total,
            "groups": {g: {"correct": c, "total": t} for g, (c, t) in correct_total.items()}}


RESULTS = {"grounding": _result({"desktop": (46, 50), "phone": (30, 50)}),
           "video": _result({"when": (9, 10), "what": (1, 10)})}


def test_targets_are_met_or_missed_by_their_group_and_unmeasured_ones_say_so():
    rows = {name: (measured, target, met) for name, measured, target, met in target_rows(RESULTS)}
    assert rows["grounding (desktop)"] == (0.92, 0.90, True)
    assert rows["grounding (phone)"] == (0.60, 0.80, False)
    assert rows["video (when)"] == (0.90, 0.80, True)  # the group, not the task's 50%
    assert rows["action"] == (None, 0.85, None) and rows["episodes"][2] is None


def test_the_card_follows_the_recipe():
    recipe = Recipe(kinds="grounding:2,video:1", languages="en,de", nothink=0.5)
    card = model_card(recipe, command="python -m recipes.default_model --out X", config=model_config("tiny"),
                      plan={"steps": 10, "source": "--steps"}, data_stats={"samples": 3, "kinds": {"grounding": 2, "video": 1}},
                      train_stats={"final_loss": 1.5, "hours": 0.1}, results=RESULTS,
                      reliance={"grounding": {"n": 4, "own": 1.0, "swapped": 1.5, "gap": 0.5}})
    assert "| grounding (phone) | 60.0% | 80% | no (short by 20.0%) |" in card
    assert "| action | not run | 85% | n/a |" in card
    assert "Pages in English and German" in card and "50% of the conversations have thinking switched off" in card
    assert "episodes" not in card.split("## Training data")[1].split("## Recipe")[0]  # not in this recipe's kinds
    assert "--languages en,de" in card and "+0.5000" in card
    assert max(map(len, card.split("## Training data")[1].split("## Recipe")[0].splitlines())) <= 100


def test_the_card_reports_the_reading_stage_the_budget_and_drawn_uis():
    recipe = Recipe(samples=0, ui_samples=64, kinds="grounding", image_max_pixels=640_000)
    reading = {"steps": 2400, "seconds": 1800.0, "patch_char_accuracy": 0.41, "token_char_accuracy": 0.2}
    card = model_card(recipe, command="c", config=model_config("tiny"), plan={"steps": 1, "source": "--steps"},
                      data_stats={"samples": 64, "kinds": {"grounding": 64}}, train_stats={}, results={},
                      reading=reading)
    assert "a 1280x720 screenshot is 390 tokens" in card
    assert "2400 steps in 30.0 min" in card and "41.0% per patch" in card
    assert "No Chromium pages. Plus 64 grounding and reading conversations on UIs drawn with PIL" in card
    v1 = model_card(Recipe(reading_minutes=0, copying_steps=0, image_max_pixels=320_000), command="c", config=model_config("tiny"),
                    plan={"steps": 1, "source": "--steps"}, data_stats={}, train_stats={}, results={})
    assert "No reading stage" in v1 and "a 1280x720 screenshot is 190 tokens" in v1
    assert "recipes.copying" not in v1  # v1 had no copying stage


def test_the_card_reports_the_copying_stage_and_the_frozen_reader():
    recipe = Recipe(samples=0, ui_samples=64, kinds="grounding", copying_steps=6000, freeze_reader=True)
    card = model_card(recipe, command="c", config=model_config("tiny"), plan={"steps": 1, "source": "--steps"},
                      data_stats={}, train_stats={}, results={},
                      copying={"steps": 6000, "copy_accuracy": 0.8125, "seconds": 1710.0})
    text = " ".join(card.split())
    assert "learns to copy on text alone (`recipes.copying`, 6000 steps" in text
    assert "held-out copy accuracy 81.2% after 28.5 min" in text
    assert "the reading stage's vision tower and projector stay frozen" in text
    unrecorded = model_card(recipe, command="c", config=model_config("tiny"), plan={"steps": 1, "source": "--steps"},
                            data_stats={}, train_stats={}, results={})
    assert "6000 steps: random UI words" in " ".join(unrecorded.split()) and "not recorded" in unrecorded
    untimed = model_card(recipe, command="c", config=model_config("tiny"), plan={"steps": 1, "source": "--steps"},
                         data_stats={}, train_stats={}, results={}, copying={"steps": 6000, "copy_accuracy": 0.95})
    assert "held-out copy accuracy 95.0%)" in " ".join(untimed.split())  # a stage assembled by hand has no time


def test_the_card_reports_the_word_grounding_stage_only_where_the_recipe_has_one():
    recipe = Recipe(samples=0, ui_samples=64, kinds="grounding", ground_steps=1000)
    card = " ".join(model_card(recipe, command="c", config=model_config("tiny"), plan={"steps": 1, "source": "--steps"},
                               data_stats={}, train_stats={}, results={},
                               grounding={"steps": 1000, "gap": 0.2267, "boxes": 0.21875}).split())
    assert "learns which word and where" in card and "(`recipes.looking ground`, 1000 steps; held-out gap 0.227" in card
    assert "22% of first answers boxed on the word, after 1000 steps" in card
    for without in (Recipe(ground_steps=0), Recipe(reading_minutes=0)):  # none asked for; no reader to ground with
        card = model_card(without, command="c", config=model_config("tiny"), plan={"steps": 1, "source": "--steps"},
                          data_stats={}, train_stats={}, results={})
        assert "recipes.looking" not in card


def test_a_browserless_eval_says_what_was_measured_where_and_what_was_not_run():
    recipe = Recipe(samples=0, ui_samples=64, kinds="grounding")
    ui = {**_result({"desktop": (3, 10), "phone": (1, 10)}), "measured": "browserless eval on the NVIDIA H200 machine"}
    card = model_card(recipe, command="c", config=model_config("tiny"), plan={"steps": 1, "source": "--minutes 5"},
                      data_stats={"samples": 64, "kinds": {"grounding": 64}},
                      train_stats={"hours": 0.08, "machine": "the NVIDIA H200 machine, bf16 autocast, float32 weights"},
                      results={"ui_grounding": ui}, not_run=["grounding", "action", "video", "episodes", "qa"])
    assert "| grounding (desktop) | not run | 90% | n/a |" in card  # drawn UIs are not the targets' web pages
    assert ("- grounding on held-out screens drawn with PIL (`synth.ui`, not web pages): 20.0% of 20 (desktop 3/10, "
            "phone 1/10); browserless eval on the NVIDIA H200 machine") in card
    assert "Not run: grounding, action, video, episodes, qa" in card and "--eval-only PACK" in card
    assert "Training took 0.08 h on the NVIDIA H200 machine, bf16 autocast, float32 weights" in card


def _first_use(boxed: int, square: bool) -> dict:
    """`recipes.first_use`'s result with `boxed` of its 15 buttons and the red square as given."""
    asked = [Asked(page, button, "q", "a", None, (0, 0, 1, 1), correct=False) for page in PAGES for button in BUTTONS]
    asked[:boxed] = [dataclasses.replace(a, correct=True) for a in asked[:boxed]]
    red = Asked("shapes.png", "red square", "q", "a", None, (0, 0, 1, 1), correct=square)
    return {**FirstUse(tuple(asked), red).as_dict(), "measured": "full eval on a CPU machine (2 cores)"}


def test_the_card_counts_the_first_use_and_says_when_it_was_not_run():
    def card(results: dict) -> str:
        return model_card(Recipe(), command="c", config=model_config("tiny"), plan={"steps": 1, "source": "--steps"},
                          data_stats={}, train_stats={}, results=results)
    missed = card({**RESULTS, "first_use": _first_use(2, square=False)})
    assert ("the demo's example): 2/15 buttons boxed, red square missed; full eval on a CPU machine (2 cores)"
            in missed)
    assert "first_use:" not in missed and "| first_use" not in missed  # a count, not a held-out share
    assert "0/15 buttons boxed, red square hit" in card({**RESULTS, "first_use": _first_use(0, square=True)})
    assert "- first use (`python -m recipes.first_use`): not run (it needs Chromium)" in card(RESULTS)
    assert "first use" not in card({})  # nothing evaluated: the table says so already


def test_the_card_names_the_stages_the_deadline_cut_with_what_they_planned():
    budgets = {"reading": {"planned_minutes": 2.0, "done_steps": 812, "cut_by_deadline": True},
               "copying": {"planned_steps": 3000, "done_steps": 3000, "cut_by_deadline": False},
               "training": {"planned_steps": 1500, "done_steps": 412, "cut_by_deadline": True}}

    def card(budgets):
        return " ".join(model_card(Recipe(), command="c", config=model_config("tiny"),
                                   plan={"steps": 1500, "source": "--minutes 5"}, data_stats={}, train_stats={},
                                   results={}, budgets=budgets).split())

    assert ("deadline (`--deadline`) cut short reading after 812 steps of a planned 2 min; training after 412 of "
            "1500 planned steps, to leave time for the eval and shipping") in card(budgets)
    assert "deadline" not in card({stage: {**b, "cut_by_deadline": False} for stage, b in budgets.items()})

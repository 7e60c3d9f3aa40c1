"""Recording a run to a directory, loading it back, the HTML report, and replay in a browser."""

import json
import re

import pytest
from _web_utils import LocalServer
from PIL import Image

from agent.actions import (Answer, Back, Box, Click, Done, Drag, Fail, Home, Hover, Key, LongPress, Mark,
                           Navigate, OpenApp, Point, Scroll, Swipe, Type, Wait)
from agent.trajectory import Recorder, Step, Trajectory, action_from_dict, action_to_dict, error_in_words, load, render_html, replay

EVERY_ACTION = [
    Click(Point(1, 2), button="right", count=2, element_info="x"), Click(Box(1, 2, 3, 4)), Click(Mark(7)),
    Hover(Point(5, 5)), Drag(Point(1, 1), Box(2, 2, 3, 3), element_info="d"), Scroll("down", Mark(2), steps=3),
    Scroll("up"), LongPress(Box(1, 1, 2, 2), duration_ms=800), Swipe("left"), Type("hi", Mark(1), clear=True),
    Key(("ctrl", "c")), Navigate("https://x.test/"), Back(), Home(), OpenApp("Clock"), Wait(5.0),
    Answer("42"), Done(), Fail("no"),
]


@pytest.mark.parametrize("action", EVERY_ACTION, ids=lambda a: type(a).__name__)
def test_actions_survive_json(action):
    assert action_from_dict(json.loads(json.dumps(action_to_dict(action)))) == action


def test_unknown_action_type_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown action type 'Teleport'"):
        action_from_dict({"type": "Teleport"})


def _trajectory():
    shot = Image.new("RGB", (40, 20), "green")
    steps = [Step(0, "executed", "left_click(start_box='[1, 2]')", action=Click(Point(1, 2)), reason="<b>go</b>",
                  url="http://x.test/", title="X", timings_ms={"observe": 12.5}, screenshot=shot),
             Step(1, "parse_error", "gibberish <script>alert(1)</script>", parse_errors=["no desktop action call found"], screenshot=shot),
             Step(2, "terminal", "DONE()", action=Done())]
    return Trajectory("Click <it>", "desktop", steps, status="done", note="the model chose Done")


def test_recording_directory_loads_back_equal(tmp_path):
    trajectory = _trajectory()
    recorder = Recorder(tmp_path / "run")
    for step in trajectory.steps:
        recorder.add(step)
    recorder.finish(trajectory)
    lines = (tmp_path / "run" / "steps.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["executed", "parse_error", "terminal"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "report.html", "step_000.png", "step_001.png", "steps.jsonl", "trajectory.json"]
    loaded = load(tmp_path / "run")
    assert loaded.steps == trajectory.steps and loaded.status == "done" and loaded.task == "Click <it>"
    assert loaded.steps[0].screenshot.getpixel((0, 0)) == (0, 128, 0)
    with pytest.raises(FileExistsError, match="already holds a recording"):
        Recorder(tmp_path / "run")


def test_an_unfinished_run_loads_from_the_jsonl(tmp_path):
    recorder = Recorder(tmp_path)
    recorder.add(_trajectory().steps[0])
    assert load(tmp_path).steps[0].action == Click(Point(1, 2))


def test_html_report_is_self_contained_and_escaped():
    page = render_html(_trajectory())
    assert page.count("data:image/jpeg;base64,") == 2
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    assert "<script>" not in page and "gibberish &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Click &lt;it&gt;" in page and "no desktop action call found" in page and "observe 12 ms" in page


def test_an_errored_runs_report_shows_the_task_the_error_in_words_and_the_steps_before_it():
    note = ('http://127.0.0.1:8000/v1/chat/completions answered HTTP 400: {"error": {"message": "prompt of 1721 '
            'tokens + max_new_tokens=8192 exceeds the model\'s 8192 positions", "type": "invalid_request_error"}}')
    steps = _trajectory().steps[:2]
    page = render_html(Trajectory("Buy <milk>", "web", steps, status="error", note=note))
    assert "<h1>Buy &lt;milk&gt;</h1>" in page and "The run stopped with an error" in page
    words = "answered HTTP 400: prompt of 1721 tokens + max_new_tokens=8192 exceeds the model&#x27;s 8192 positions</p>"
    assert words in page and "2 steps were taken before it (below)." in page
    assert page.index("stopped with an error") < page.index("Step 0 ·") < page.index("Step 1 ·")
    empty = render_html(Trajectory("t", "web", [], status="error", note="RuntimeError: browser crashed"))
    assert "<p>RuntimeError: browser crashed</p>" in empty and "No step was taken before it." in empty
    assert error_in_words("not json {at all") == "not json {at all"


@pytest.mark.browser
@pytest.mark.slow
def test_replay_re_executes_the_recorded_actions(tmp_path):
    from agent.browser import BrowserEnv
    from agent.loop import Agent
    from agent.policy import ScriptedPolicy

    form = ('<title>f</title><input id=q style="position:absolute;left:0;top:0;width:400px;height:100px">'
            '<button id=b onclick="document.title=\'sent \'+q.value" '
            'style="position:absolute;left:0;top:200px;width:400px;height:100px">Send</button>')
    with LocalServer() as server:
        url = server.add("/", form)
        with BrowserEnv((400, 300)) as env:
            policy = ScriptedPolicy(["left_click(start_box='[500, 166]')", "type(content='{{secret:word}}')",
                                     "left_click(start_box='[500, 833]')", "DONE()"])
            run = Agent(policy=policy, env=env, platform="desktop", secrets={"word": "swordfish"},
                        record=str(tmp_path / "run")).run("send the word", start_url=url)
            assert run.status == "done" and env.page.title() == "sent swordfish"
        from agent.safety import Secrets
        with BrowserEnv((400, 300)) as fresh:
            fresh.goto(url)
            replayed = replay(tmp_path / "run", fresh, secrets=Secrets({"word": "swordfish"}))
            assert [s.index for s in replayed] == [0, 1, 2]
            assert fresh.page.title() == "sent swordfish"

"""`python -m agent run` end to end: a real browser, a local page, a model behind a local
OpenAI-compatible endpoint answering in the web (set-of-marks) format; then `replay`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _agent_utils import FakeOpenAI
from _web_utils import LocalServer

from agent.trajectory import load

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
PAGE = ("<title>search</title><form action=/result><input name=q style='position:absolute;left:10px;top:10px'>"
        "</form>")


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_run_with_an_endpoint_records_and_replays(tmp_path):
    model = FakeOpenAI(replies=["Thought: type it\nAction: Type [0]; [{{secret:word}}]\nMemory_Updated: {}",
                                "Thought: done\nAction: ANSWER; <content>searched</content>\nMemory_Updated: {}"])
    try:
        with LocalServer() as server:
            start = server.add("/", PAGE)
            server.add("/result", "<title>result</title>")
            result = _run("run", "--task", "search for {{secret:word}}", "--url", start, "--endpoint", model.base_url,
                          "--model-name", "glm-4.5v", "--viewport", "640x480", "--max-steps", "4",
                          "--record", str(tmp_path / "run"), "--secret", "word=AGENT_TEST_WORD",
                          "--api-key-env", "AGENT_TEST_KEY", env={"AGENT_TEST_WORD": "pelican", "AGENT_TEST_KEY": "k1"})
            assert result.returncode == 0, result.stderr
            assert "status: answered" in result.stdout and "answer: searched" in result.stdout
            assert ("127.0.0.1", "/result?q=pelican") in {(h.split(":")[0], p) for h, p in server.requests}
            assert model.requests[0][1]["Authorization"] == "Bearer k1"
            assert "pelican" not in str(model.requests)  # the model saw only the placeholder
            trajectory = load(tmp_path / "run")
            assert trajectory.status == "answered" and len(trajectory.steps) == 2

            replayed = _run("replay", str(tmp_path / "run"), "--url", start, "--viewport", "640x480",
                            "--secret", "word=AGENT_TEST_WORD", env={"AGENT_TEST_WORD": "pelican"})
            assert replayed.returncode == 0, replayed.stderr
            assert "replayed 1 actions; now at " + server.url("/result?q=pelican") in replayed.stdout
    finally:
        model.close()


def test_bad_arguments_are_named():
    result = _run("run", "--task", "x", "--endpoint", "http://127.0.0.1:9/v1", "--viewport", "big")
    assert result.returncode != 0 and "--viewport 'big' is not WIDTHxHEIGHT" in result.stderr
    result = _run("run", "--task", "x")
    assert result.returncode != 0 and "one of the arguments --model --endpoint is required" in result.stderr

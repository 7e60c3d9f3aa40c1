"""`python -m agent run` end to end: a real browser, a local page, a model behind a local
OpenAI-compatible endpoint answering in the web (set-of-marks) format; then `replay`. And the
README's agent command line, as written, against the real `python -m demo.serve` with the
shipped model."""

import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
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


def _readme_command(prefix: str) -> list[str]:
    line = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(prefix))
    return shlex.split(line, comments=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readmes_agent_command_runs_against_the_real_server(tmp_path):
    """The README's serve and agent lines with their placeholders filled (URL, PATH, port, task,
    record directory) and nothing else changed but a step budget: the agent takes its steps through
    the real server and the shipped model and does not end in `error` (whether it succeeds is the
    model's business)."""
    port = _free_port()
    serve = [a for a in _readme_command("python -m demo.serve") if a not in ("[--model", "PATH]")]
    serve = [str(port) if a == "8000" else a for a in serve]
    assert serve[:3] == ["python", "-m", "demo.serve"]
    server = subprocess.Popen([sys.executable, *serve[1:]], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr and server.stderr.read()
                time.sleep(0.5)
        with LocalServer() as pages:
            start = pages.add("/", "<title>shop</title><button onclick=\"document.title='bought'\">Buy</button>"
                                   "<a href=/about>About</a>")
            pages.add("/about", "<title>about</title><p>About us</p>")
            fill = {"URL": start, "...": "Click the Buy button", "runs/x": str(tmp_path / "run"),
                    "http://127.0.0.1:8000/v1": f"http://127.0.0.1:{port}/v1"}
            agent = [fill.get(a, a) for a in _readme_command("python -m agent run")]
            assert agent[:4] == ["python", "-m", "agent", "run"] and "--model-name" not in agent
            result = subprocess.run([sys.executable, *agent[1:], "--max-steps", "2", "--confirm", "never"],
                                    cwd=ROOT, capture_output=True, text=True, timeout=600)
        status = next(line for line in result.stdout.splitlines() if line.startswith("status: "))
        assert not status.startswith("status: error"), result.stdout + result.stderr
        trajectory = load(tmp_path / "run")
        assert trajectory.steps and trajectory.status != "error"
    finally:
        server.terminate()
        server.wait(timeout=30)

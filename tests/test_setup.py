"""The environment the README's commands build: every package imports, torch and torchvision
agree, and the system Chromium starts through Playwright."""

import importlib
from pathlib import Path

import pytest


@pytest.mark.parametrize("name", ["vlm", "agent", "synth", "train", "recipes", "demo", "timm", "torchvision", "decord",
                                  "playwright", "gradio", "peft", "accelerate", "transformers",
                                  "rapidocr", "onnxruntime"])
def test_imports(name):
    importlib.import_module(name)


def test_torchvision_ops_load_with_this_torch():
    # The failure this guards against: torchvision built for another torch raises
    # "operator torchvision::nms does not exist" at the first use of its C++ ops.
    import torch
    import torchvision

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def test_reference_models_present():
    from transformers.models import glm4v, glm4v_moe  # noqa: F401


@pytest.mark.browser
def test_system_chromium_renders_a_page():
    from playwright.sync_api import sync_playwright

    from agent.chromium import launch_chromium

    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 320, "height": 200})
        page.set_content("<button onclick=\"this.textContent='clicked'\">press</button>")
        page.click("button")
        assert page.text_content("button") == "clicked"
        browser.close()


def test_run_sh_says_what_it_is_doing_at_each_set_up_stage(tmp_path):
    """`./run.sh` on a fresh checkout prints one line per stage while pip works (pip and python
    faked here: the stages, not the installs, are under test)."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    for name in ("run.sh", "pyproject.toml"):
        shutil.copy(root / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("pip", "python"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    result = subprocess.run(["bash", str(tmp_path / "run.sh"), "python", "-c", "pass"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    stages = [line for line in result.stderr.splitlines() if line.startswith("run.sh: ")]
    assert [s.split()[1] for s in stages[:3]] == ["[2/4]", "[3/4]", "[4/4]"]
    assert "torch==" in stages[0] and stages[-1].startswith("run.sh: Python set-up done in ")
    assert (tmp_path / ".venv" / ".installed").is_file()

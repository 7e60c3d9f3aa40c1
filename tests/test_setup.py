"""The environment the README's commands build: every package imports, torch and torchvision
agree, and the system Chromium starts through Playwright."""

import importlib

import pytest


@pytest.mark.parametrize("name", ["vlm", "agent", "synth", "train", "recipes", "demo", "timm", "torchvision", "decord",
                                  "playwright", "gradio", "peft", "accelerate", "transformers"])
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

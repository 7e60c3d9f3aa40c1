"""A plain Playwright script that finds elements by description through the model.

    python examples/visual_page_script.py --endpoint http://127.0.0.1:8000/v1 --model-name glm-4.5v \
        --url https://example.com/login --email a@b.c

Serve GLM-4.5V (vLLM, SGLang or this project's server) behind an OpenAI-compatible endpoint
first; the script fills the email field and clicks the sign-in button without any selector.
Use `--model PATH` instead of `--endpoint` to run a local checkpoint in-process.
"""

import argparse
import logging

from playwright.sync_api import sync_playwright

from agent.chromium import launch_chromium
from agent.policy import OpenAIPolicy
from agent.visual_page import VisualPage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--email", default="a@b.c")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--endpoint", help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    model.add_argument("--model", help="a local checkpoint directory")
    parser.add_argument("--model-name", default="glm-4.5v")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    if args.endpoint:
        policy = OpenAIPolicy(args.endpoint, args.model_name)
    else:
        from vlm import VLM
        policy = VLM.from_pretrained(args.model)

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(args.url)

        visual = VisualPage(page, policy)
        field = visual.fill("the email field", args.email)
        print(f"email field at {field.box.as_list()} (0-999), centre {field.center} CSS px")
        visual.click("the Sign in button")
        page.wait_for_load_state()
        print(f"now at {page.url}: {page.title()!r}")
        browser.close()


if __name__ == "__main__":
    main()

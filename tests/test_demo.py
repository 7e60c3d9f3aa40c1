"""The Gradio demo in a real browser: upload an image, ask, watch the answer stream in and
its box get drawn on the image. The model is the scripted tiny checkpoint (its greedy answer
is known, see `_scripted_checkpoint`), run by the real engine."""

from __future__ import annotations

import io
import re
import socket

import pytest
from PIL import Image, ImageColor

from _scripted_checkpoint import THINKING, build_scripted_checkpoint
from agent.actions import Box
from demo.app import Turn, build_app, grounding_view, to_chatbot, to_messages
from demo.draw import PALETTE
from vlm import VLM
from vlm.outputs import to_pixels

# Every change of the chat's text, recorded in the page as it happens.
RECORD_CHAT = """() => {
  window.__chat = [];
  const chat = document.querySelector('#chatbot');
  new MutationObserver(() => window.__chat.push(chat.innerText))
    .observe(chat, {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    return build_scripted_checkpoint(tmp_path_factory.mktemp("scripted"))


@pytest.fixture(scope="module")
def vlm(scripted):
    return VLM.from_pretrained(scripted.path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_messages_keep_files_before_text_and_answers_raw():
    turns = [Turn("Where?", ("a.png", "b.mp4"), thinking="hm", answer="<|begin_of_box|>[1,2,3,4]<|end_of_box|>"),
             Turn("And now?")]
    assert to_messages(turns) == [
        {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "video", "video": "b.mp4"},
                                     {"type": "text", "text": "Where?"}]},
        {"role": "assistant", "content": "<|begin_of_box|>[1,2,3,4]<|end_of_box|>"},
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    ]


def test_grounding_view_draws_on_the_latest_image(tmp_path):
    old, new = tmp_path / "old.png", tmp_path / "new.png"
    Image.new("RGB", (100, 100), "black").save(old)
    Image.new("RGB", (400, 200), "white").save(new)
    turns = [Turn("a", (str(old),), answer="none"),
             Turn("b", (str(new),), answer="<|begin_of_box|>[100,200,500,600]<|end_of_box|>")]
    view = grounding_view(turns)
    assert view.size == (400, 200)
    left, top, _, _ = to_pixels(Box(100, 200, 500, 600), width=400, height=200)
    assert view.getpixel((int(left) + 1, 80)) == ImageColor.getrgb(PALETTE[0])
    assert view.getpixel((150, 80)) == (255, 255, 255)


@pytest.mark.browser
@pytest.mark.slow
def test_chat_streams_the_answer_and_draws_its_box(vlm, scripted, tmp_path):
    from playwright.sync_api import sync_playwright

    from agent.chromium import launch_chromium

    picture = tmp_path / "scene.png"
    Image.new("RGB", (400, 300), "white").save(picture)
    app = build_app(vlm).queue()
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.wait_for_selector("#prompt textarea")
            page.evaluate(RECORD_CHAT)
            page.set_input_files("#prompt input[type=file]", str(picture))
            page.wait_for_selector("#prompt img")  # the upload is attached to the message
            page.fill("#prompt textarea", "Where is the red square?")
            page.press("#prompt textarea", "Enter")
            page.wait_for_function("document.querySelector('#chatbot').innerText.includes('804,917])')",
                                   timeout=60_000)
            page.wait_for_selector("#grounding img", timeout=30_000)
            page.screenshot(path=tmp_path / "demo.png", full_page=True)

            chat = page.inner_text("#chatbot")
            assert re.search(r"Here it is: \[\d+, \d+, \d+, \d+\] px \(0-999: \[25,36,804,917\]\)", chat)  # pixels first
            assert "<|begin_of_box|>" not in chat  # box tokens are not shown to the user
            assert "Thinking" in chat  # the reasoning is there, collapsible
            page.click("#chatbot >> text=Thinking")
            page.wait_for_function(f"document.querySelector('#chatbot').innerText.includes({THINKING!r})")

            # streamed: the page showed the answer partly written before it was complete
            seen = page.evaluate("window.__chat")
            partial = [t for t in seen if "Here it is" in t and "804,917]" not in t]
            assert partial, f"no partial answer among {len(seen)} recorded states"

            # the box is painted on the image shown beside the chat, where the answer says
            src = page.get_attribute("#grounding img", "src")
            shown = Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")
            assert shown.size == (400, 300)
            left, top, right, bottom = to_pixels(Box(*scripted.box_0_999), width=400, height=300)
            color = ImageColor.getrgb(PALETTE[0])
            assert shown.getpixel((int(left) + 1, int((top + bottom) / 2))) == color
            assert shown.getpixel((int((left + right) / 2), int(top) + 1)) == color
            assert shown.getpixel((int((left + right) / 2), int((top + bottom) / 2))) == (255, 255, 255)
            browser.close()
    finally:
        app.close()
    assert (tmp_path / "demo.png").stat().st_size > 10_000


@pytest.mark.browser
@pytest.mark.slow
def test_agent_tab_shows_each_step_while_the_run_goes_on(tmp_path):
    import threading

    from _web_utils import LocalServer

    from demo.agent_tab import VIEWPORT, run_agent

    # A model that clicks the same spot on a still page: the loop detector ends the run at step 3.
    scripted = build_scripted_checkpoint(tmp_path / "agent_model", thinking="Click it.",
                                         answer="<|begin_of_box|>left_click(start_box='[312, 645]')<|end_of_box|>")

    class Gated:
        """The model, held before its second answer until the test has seen step 1."""
        def __init__(self, vlm):
            self.vlm, self.calls, self.gate = vlm, 0, threading.Event()

        def generate(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 2:
                assert self.gate.wait(60), "step 1 never reached the tab"
            return self.vlm.generate(*args, **kwargs)

    model = Gated(VLM.from_pretrained(scripted.path))
    with LocalServer() as server:
        url = server.add("/", "<h1>Still</h1>")
        events = []
        for event in run_agent(model, url, "Click the middle", max_steps=5, format="desktop",
                               stop=threading.Event()):
            if event.kind == "step" and event.step == 1:
                assert not model.gate.is_set()  # the run is waiting on step 2: step 1 arrived live
                model.gate.set()
            events.append(event)
    assert [(e.kind, e.step) for e in events] == [("step", 1), ("step", 2), ("step", 3), ("end", 0)]
    assert all(e.screenshot.size == VIEWPORT and e.thinking == "Click it." for e in events[:3])
    assert [e.action for e in events[:3]] == ["left_click(start_box='[312, 645]')"] * 2 + [""]  # step 3: a loop
    assert "left_click" in events[0].text and events[-1].text.startswith("loop: ")


@pytest.mark.browser
@pytest.mark.slow
def test_agent_tab_runs_the_model_in_a_browser_step_by_step(tmp_path):
    import http.server
    import threading
    from functools import partial

    from playwright.sync_api import sync_playwright

    from agent.chromium import launch_chromium

    # A model that looks at the page and declares the task done, in the desktop format.
    scripted = build_scripted_checkpoint(tmp_path / "agent_model", thinking="The page is open.",
                                         answer="<|begin_of_box|>DONE()<|end_of_box|>")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1 style='font-size:64px'>Opening hours: 9-17</h1>")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    app = build_app(VLM.from_pretrained(scripted.path)).queue()
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.get_by_role("tab", name="Agent").click()
            page.locator("#agent-url").get_by_role("textbox").fill(
                f"http://127.0.0.1:{server.server_port}/index.html")
            page.locator("#agent-task").get_by_role("textbox").fill("Find the opening hours")
            page.get_by_label("desktop").check()
            page.click("#agent-run")
            page.wait_for_function("/Finished|Error/.test(document.querySelector('#agent-status').innerText)",
                                   timeout=90_000)
            page.screenshot(path=tmp_path / "agent_tab.png", full_page=True)
            assert "Finished — done" in page.inner_text("#agent-status")
            log = page.inner_text("#agent-log")
            assert "Step 1: thinking" in log and "Step 1: DONE()" in log  # reasoning and action, no box tokens
            # the screen the model saw is shown: the local page, rendered by the agent's browser
            src = page.get_attribute("#agent-screen img", "src")
            shown = Image.open(io.BytesIO(page.request.get(src).body()))
            assert shown.size == (1024, 640)
            browser.close()
    finally:
        app.close()
        server.shutdown()


def test_chat_shows_boxes_in_image_pixels_and_no_empty_thinking_panel(tmp_path):
    shot = tmp_path / "shot.png"
    Image.new("RGB", (400, 200), "white").save(shot)
    turns = [Turn("Where?", (str(shot),), thinking="  ", answer="It is <|begin_of_box|>[100,200,500,600]<|end_of_box|>")]
    shown = to_chatbot(turns)
    assert [m.get("metadata") for m in shown] == [None, None, None]  # image, question, answer: no Thinking panel
    assert shown[-1]["content"] == "It is [40, 40, 200, 120] px (0-999: [100,200,500,600])"
    with_reasoning = to_chatbot([Turn("Hi", thinking="Greeting.", answer="Hello")])
    assert with_reasoning[1]["metadata"]["title"] == "Thinking" and with_reasoning[2]["content"] == "Hello"

"""The prompt builders reproduce the released GLM-4.5V prompts (text blocks compared verbatim
with the release's examples) and place history and screenshots as the release does."""

import base64
import io
from datetime import datetime

from PIL import Image

from agent.environment import ElementInfo
from agent.prompts import (PastStep, build_messages, describe_marks, desktop_action_space, desktop_messages,
                           grounding_messages, mobile_action_space, mobile_messages, web_messages)

# Verbatim from the release (examples/gui-agent/glm-45v of the GLM-V repository).
RELEASED_DESKTOP_KEY_BLOCK = """### key

Call rule: `key(keys='')`
{
    'name': 'key',
    'description': 'Simulate pressing a single key or combination of keys on the keyboard.',
    'parameters': {
        'type': 'object',
        'properties': {
            'keys': {
                'type': 'string',
                'description': 'The key or key combination to press. Use '+' to separate keys in combinations (e.g., 'ctrl+c', 'alt+tab').'
            }
        },
        'required': ['keys']
    }
}"""

RELEASED_DESKTOP_CLICK_HEAD = """### {left,right,middle}_click

Call rule: `{left,right,middle}_click(start_box='[x,y]', element_info='')`
{
    'name': ['left_click', 'right_click', 'middle_click'],
    'description': 'Perform a left/right/middle mouse click at the specified coordinates on the screen.',
    'parameters': {
        'type': 'object',
        'properties': {
            'start_box': {
                'type': 'array',
                'items': {
                    'type': 'integer'
                },"""

RELEASED_MOBILE_STATUS_BLOCK = """### status

Calling rule: `{"action_type": "status", "goal_status": "<complete|infeasible>"}`
{
    "name": "status",
    "description": "Finish the task by using the status action with complete or infeasible as goal_status.",
    "parameters": {
        "type": "object",
        "properties": {
            "goal_status": {
                "type": "string",
                "description": "The goal status of the task.",
                "enum": ["complete", "infeasible"]
            }
        },
        "required": [
            "goal_status"
        ]
    }
}

### answer"""

RELEASED_MOBILE_WAIT_BLOCK = """### wait

Calling rule: `{"action_type": "wait"}`
{
    "name": "wait",
    "description": "Wait for the screen to update.",
    "parameters": {
        "type": "object",
        "properties": {},
        "required": []
    }
}"""


def _screen(color="white", size=(200, 100)):
    return Image.new("RGB", size, color)


def _decode(part):
    data = part["image_url"]["url"].split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_desktop_action_space_matches_the_release_verbatim():
    space = desktop_action_space()
    assert RELEASED_DESKTOP_KEY_BLOCK in space
    assert space.startswith(RELEASED_DESKTOP_CLICK_HEAD)
    assert space.endswith("'description': 'Indicate that the current task cannot be completed or is impossible "
                          "to accomplish.',\n    'parameters': {\n        'type': 'object',\n        'properties': {},\n"
                          "        'required': []\n    }\n}")


def test_mobile_action_space_matches_the_release_verbatim():
    space = mobile_action_space()
    assert space.startswith(RELEASED_MOBILE_STATUS_BLOCK)
    assert space.endswith(RELEASED_MOBILE_WAIT_BLOCK)
    assert '"description": "The name of the app to open. Supported apps: Google Chrome,Settings,Camera,' in space


def test_desktop_history_keeps_the_last_four_screenshots_at_half_size_and_the_current_one_last():
    history = [PastStep(f"left_click(start_box='[{i}, {i}]')", reason=f"thought {i}", screenshot=_screen("gray"))
               for i in range(6)]
    messages = desktop_messages("Open the menu", _screen("red"), history, memory='[{"k": "v"}]')
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    images = [p for p in content if p["type"] == "image_url"]
    assert len(images) == 5
    assert [_decode(p).size for p in images] == [(100, 50)] * 4 + [(200, 100)]
    assert _decode(content[-1]).getpixel((0, 0)) == (255, 0, 0)
    text = "".join(p["text"] for p in content if p["type"] == "text")
    assert "# Task:\nOpen the menu\n\n# Task Platform\nUbuntu\n\n# Action Space\n\n### {left,right,middle}_click" in text
    assert ("History:\nstep 1: Screenshot:(Omitted in context.) Thought: thought 0\n"
            "Action: left_click(start_box='[0, 0]')\nstep 2: Screenshot:(Omitted in context.)") in text
    assert "step 3: Screenshot: Thought: thought 2\nAction: left_click(start_box='[2, 2]')" in text
    assert text.endswith('\nMemory:\n[{"k": "v"}]\n# Output Format\nPlain text explanation with action(param=\'...\')\n'
                         'Memory:\n[{"key": "value"}, ...]\n\n# Some Additional Notes\n- I\'ll give you the most recent 4 '
                         "history screenshots(shrunked to 50%*50%) along with the historical action steps.\n"
                         "- You should put the key information you *have to remember* in a seperated memory part and "
                         "I'll give it to you in the next round. The content in this part should be a dict list. If you "
                         "no longer need some given information, you should remove it from the memory. Even if you don't "
                         "need to remember anything, you should also output an empty list.\n\nCurrent Screenshot:\n")


def test_mobile_prompt_layout():
    first = mobile_messages("Set an alarm", _screen())[0]["content"]
    assert [p["type"] for p in first] == ["text", "image_url"]
    assert ("# Historical Actions and Current Memory\nYou just started, no action has been performed yet.\n"
            "# Output Format\n1. Memory: important information") in first[0]["text"]
    history = [PastStep('{"action_type": "open_app", "app_name": "Clock"}', reason="open it", memory="none")]
    text = mobile_messages("Set an alarm", _screen(), history)[0]["content"][0]["text"]
    assert ('Step 0:\nMemory: none\nReason: open it\nAction: {"action_type": "open_app", "app_name": "Clock"}\n\n\n'
            "# Output Format") in text
    assert "Your answer should look like:\nMemory: ...\nReason: ...\nAction: {\"action_type\":...}" in text
    swapped = mobile_messages("x", _screen(), screenshot_first=True)[0]["content"]
    assert [p["type"] for p in swapped] == ["image_url", "text"]


def test_web_prompt_fills_the_release_template():
    history = [PastStep(f"Click [{i}]", reason=f"t{i}") for i in range(20)]
    elements = describe_marks({2: ElementInfo(tag="input", text=None), 1: ElementInfo(tag="button", text="Go  now")})
    content = web_messages("Find the price", _screen(), history, url="http://127.0.0.1:8000/", web_elements=elements,
                           memory='{"a": 1}', now=datetime(2025, 8, 11, 15, 42))[0]["content"]
    text = content[0]["text"]
    assert text.startswith("You are a GUI Agent")
    assert ("# Task:\nFind the price, Please interact with http://127.0.0.1:8000/ and get the answer. "
            "The current time in Beijing is 2025-08-11, 03:00 PM.") in text
    assert "(format: Thought,Action,The Observation after the Action):\n0.Thought: t5 Action: Click [5]\n" in text
    assert "Click [4]" not in text  # only the last 15 steps
    assert 'The "Memory" in the current step as follow:\nMemory:{"a": 1}\n' in text
    assert 'please refer to the textual information.\n[1]: <button> "Go now";\n[2]: <input>;\nC. The "Memory"' in text.replace(
        "Please focus more on the screenshot and then refer", "please refer")
    assert 'For example: {"user_email_address": "test@163.com"' in text
    assert "Thought: {Your brief thoughts (briefly summarize the info that will help ANSWER)}" in text
    assert content[-1]["type"] == "image_url"


def test_pil_images_and_dispatch():
    screen = _screen()
    messages = build_messages("desktop", "t", screen, images="pil")
    assert messages[0]["content"][-1] == {"type": "image", "image": screen}
    assert "Task Platform\nMobile" in build_messages("mobile", "t", screen)[0]["content"][0]["text"]
    grounding = grounding_messages("the blue Sign in button", screen)[0]["content"]
    assert grounding[1]["text"] == "Help me to locate the blue Sign in button and give me its bounding boxes."

"""The released GLM-4.5V agent prompts' fixed text, as data (see `agent.prompts` for the builders).

Source: the official GLM-V repository, `examples/gui-agent/glm-45v` (agent.md and the example
script). The wording, including its typos ("cannnot", "seperated", "Vsit"), is kept exactly:
the model was trained and evaluated on these strings. The action-space schemas are written
here as Python data and rendered by `render_schema` into the layout the release uses (desktop:
Python-dict style with single quotes, mobile: JSON with double quotes). What is left out on
purpose: the OSWorld account passwords in the desktop notes and the AndroidWorld app-specific
tips in the mobile notes (they describe one benchmark's machine, not the task).
"""

from __future__ import annotations

PREAMBLE = (
    "You are a GUI Agent, and your primary task is to respond accurately to user requests or questions. "
    "In addition to directly answering the user's queries, you can also use tools or perform GUI operations "
    "directly until you fulfill the user's request or provide a correct answer. You should carefully read and "
    "understand the images and questions provided by the user, and engage in thinking and reflection when "
    "appropriate. The coordinates involved are all represented in thousandths (0-999).")


def render_schema(value: object, *, quote: str, expand: frozenset[str] = frozenset(), indent: int = 0) -> str:
    """The release's schema layout: dicts one key per line (4 spaces), lists inline, except the
    lists under a key in `expand`, one item per line. Strings are not escaped, as in the release."""
    pad, inner = " " * indent, " " * (indent + 4)

    def scalar(v: object) -> str:
        return f"{quote}{v}{quote}" if isinstance(v, str) else str(v)

    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for key, item in value.items():
            if isinstance(item, list) and key in expand and item:
                body = ",\n".join(f"{inner}    {scalar(v)}" for v in item)
                lines.append(f"{inner}{scalar(key)}: [\n{body}\n{inner}]")
            else:
                lines.append(f"{inner}{scalar(key)}: {render_schema(item, quote=quote, expand=expand, indent=indent + 4)}")
        return "{\n" + ",\n".join(lines) + f"\n{pad}}}"
    if isinstance(value, list):
        return "[" + ", ".join(scalar(v) for v in value) + "]"
    return scalar(value)


# --- desktop (Ubuntu) ---------------------------------------------------------------------

def _point(what: str) -> dict:
    return {"type": "array", "items": {"type": "integer"}, "description": what}


def _info(what: str) -> dict:
    return {"type": "string", "description": f"Optional text description of the UI element being {what}."}


DESKTOP_ACTIONS: list[tuple[str, str, dict]] = [
    ("{left,right,middle}_click", "{left,right,middle}_click(start_box='[x,y]', element_info='')", {
        "name": ["left_click", "right_click", "middle_click"],
        "description": "Perform a left/right/middle mouse click at the specified coordinates on the screen.",
        "parameters": {"type": "object", "properties": {
            "start_box": _point("Coordinates [x,y] where to perform the click, normalized to 0-999 range."),
            "element_info": _info("clicked")}, "required": ["start_box"]}}),
    ("hover", "hover(start_box='[x,y]', element_info='')", {
        "name": "hover",
        "description": "Move the mouse pointer to the specified coordinates without performing any click action.",
        "parameters": {"type": "object", "properties": {
            "start_box": _point("Coordinates [x,y] where to move the mouse pointer, normalized to 0-999 range."),
            "element_info": _info("hovered over")}, "required": ["start_box"]}}),
    ("left_double_click", "left_double_click(start_box='[x,y]', element_info='')", {
        "name": "left_double_click",
        "description": "Perform a left mouse double-click at the specified coordinates on the screen.",
        "parameters": {"type": "object", "properties": {
            "start_box": _point("Coordinates [x,y] where to perform the double-click, normalized to 0-999 range."),
            "element_info": _info("double-clicked")}, "required": ["start_box"]}}),
    ("left_drag", "left_drag(start_box='[x1,y1]', end_box='[x2,y2]', element_info='')", {
        "name": "left_drag",
        "description": "Drag the mouse from starting coordinates to ending coordinates while holding the left mouse button.",
        "parameters": {"type": "object", "properties": {
            "start_box": _point("Starting coordinates [x1,y1] for the drag operation, normalized to 0-999 range."),
            "end_box": _point("Ending coordinates [x2,y2] for the drag operation, normalized to 0-999 range."),
            "element_info": _info("dragged")}, "required": ["start_box", "end_box"]}}),
    ("key", "key(keys='')", {
        "name": "key",
        "description": "Simulate pressing a single key or combination of keys on the keyboard.",
        "parameters": {"type": "object", "properties": {"keys": {
            "type": "string",
            "description": "The key or key combination to press. Use '+' to separate keys in combinations "
                           "(e.g., 'ctrl+c', 'alt+tab')."}}, "required": ["keys"]}}),
    ("type", "type(content='')", {
        "name": "type",
        "description": "Type text content into the currently focused text input field. This action only performs "
                       "typing and does not handle field activation or clearing.",
        "parameters": {"type": "object", "properties": {"content": {
            "type": "string", "description": "The text content to be typed into the active text field."}},
            "required": ["content"]}}),
    ("scroll", "scroll(start_box='[x,y]', direction='', step=5, element_info='')", {
        "name": "scroll",
        "description": "Scroll an element at the specified coordinates in the specified direction by a given number "
                       "of wheel steps.",
        "parameters": {"type": "object", "properties": {
            "start_box": _point("Coordinates [x,y] of the element or area to scroll, normalized to 0-999 range."),
            "direction": {"type": "string", "enum": ["down", "up"],
                          "description": "The direction to scroll: 'down' or 'up'."},
            "step": {"type": "integer", "default": 5, "description": "Number of wheel steps to scroll, default is 5."},
            "element_info": _info("scrolled")}, "required": ["start_box", "direction"]}}),
    ("WAIT", "WAIT()", {"name": "WAIT", "description": "Wait for 5 seconds before proceeding to the next action.",
                        "parameters": {"type": "object", "properties": {}, "required": []}}),
    ("DONE", "DONE()", {"name": "DONE", "description": "Indicate that the current task has been completed "
                        "successfully and no further actions are needed.",
                        "parameters": {"type": "object", "properties": {}, "required": []}}),
    ("FAIL", "FAIL()", {"name": "FAIL", "description": "Indicate that the current task cannot be completed or is "
                        "impossible to accomplish.",
                        "parameters": {"type": "object", "properties": {}, "required": []}}),
]

DESKTOP_OUTPUT_FORMAT = 'Plain text explanation with action(param=\'...\')\nMemory:\n[{"key": "value"}, ...]'

DESKTOP_NOTES = (
    "- I'll give you the most recent 4 history screenshots(shrunked to 50%*50%) along with the historical action steps.\n"
    "- You should put the key information you *have to remember* in a seperated memory part and I'll give it to you "
    "in the next round. The content in this part should be a dict list. If you no longer need some given information, "
    "you should remove it from the memory. Even if you don't need to remember anything, you should also output an "
    "empty list.")

# --- mobile (Android) ---------------------------------------------------------------------

_BOX_2D = "The box_2d should be [[xmin,ymin,xmax,ymax]] normalized to 0-999, indicating the position of the element."


def _no_params(name: str, description: str) -> tuple[str, str, dict]:
    return (name, f'{{"action_type": "{name}"}}', {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {}, "required": []}})


def mobile_actions(apps: str) -> list[tuple[str, str, dict]]:
    return [
        ("status", '{"action_type": "status", "goal_status": "<complete|infeasible>"}', {
            "name": "status",
            "description": "Finish the task by using the status action with complete or infeasible as goal_status.",
            "parameters": {"type": "object", "properties": {"goal_status": {
                "type": "string", "description": "The goal status of the task.", "enum": ["complete", "infeasible"]}},
                "required": ["goal_status"]}}),
        ("answer", '{"action_type": "answer", "text": "<answer_text>"}', {
            "name": "answer", "description": "Answer user's question.",
            "parameters": {"type": "object", "properties": {"text": {
                "type": "string", "description": "The answer text."}}, "required": ["text"]}}),
        ("click", '{"action_type": "click", "box_2d": [[xmin,ymin,xmax,ymax]]}', {
            "name": "click",
            "description": "Click/tap on an element on the screen. Use the box_2d to indicate which element you want to click.",
            "parameters": {"type": "object", "properties": {"box_2d": {"type": "array", "description": _BOX_2D}},
                           "required": ["box_2d"]}}),
        ("long_press", '{"action_type": "long_press", "box_2d": [[xmin,ymin,xmax,ymax]]}', {
            "name": "long_press",
            "description": "Long press on an element on the screen, similar with the click action above, use the box_2d "
                           "to indicate which element you want to long press.",
            "parameters": {"type": "object", "properties": {"box_2d": {"type": "array", "description": _BOX_2D}},
                           "required": ["box_2d"]}}),
        ("input_text", '{"action_type": "input_text", "text": "<text_input>", "box_2d": [[xmin,ymin,xmax,ymax]], '
                       '"override": true/false}', {
            "name": "input_text",
            "description": "Type text into a text field (this action contains clicking the text field, typing in the "
                           "text and pressing the enter). Use the box_2d to indicate the target text field.",
            "parameters": {"type": "object", "properties": {
                "text": {"description": "The text to be input. Can be from the command, the memory, or the current screen."},
                "box_2d": {"description": _BOX_2D},
                "override": {"description": "If true, the text field will be cleared before typing. If false, the text "
                                            "will be appended."}}, "required": ["text", "box_2d", "override"]}}),
        _no_params("keyboard_enter", "Press the Enter key."),
        _no_params("navigate_home", "Navigate to the home screen."),
        _no_params("navigate_back", "Navigate back."),
        ("swipe", '{"action_type": "swipe", "direction": "<up|down|left|right>", "box_2d": [[xmin,ymin,xmax,ymax]](optional)}', {
            "name": "swipe", "description": "Swipe the screen or a scrollable UI element in one of the four directions.",
            "parameters": {"type": "object", "properties": {
                "direction": {"type": "string", "description": "The direction to swipe.",
                              "enum": ["up", "down", "left", "right"]},
                "box_2d": {"type": "array", "description": "The box_2d to swipe a specific UI element, leave it empty "
                                                           "when swiping the whole screen."}},
                "required": ["direction"]}}),
        ("open_app", '{"action_type": "open_app", "app_name": "<name>"}', {
            "name": "open_app", "description": "Open an app (nothing will happen if the app is not installed).",
            "parameters": {"type": "object", "properties": {"app_name": {
                "type": "string", "description": f"The name of the app to open. Supported apps: {apps}"}},
                "required": ["app_name"]}}),
        _no_params("wait", "Wait for the screen to update."),
    ]


MOBILE_OUTPUT_FORMAT = (
    "1. Memory: important information you want to remember for the future actions. The memory should be only contents "
    "on the screen that will be used in the future actions. It should satisfy that: you cannnot determine one or more "
    "future actions without this memory. \n"
    "2. Reason: the reason for the action and the memory. Your reason should include, but not limited to:- the content "
    "of the GUI, especially elements that are tightly related to the user goal- the step-by-step thinking process of "
    "how you come up with the new action. \n"
    "3. Action: the action you want to take, in the correct JSON format. The action should be one of the above list.\n\n"
    "Your answer should look like:\nMemory: ...\nReason: ...\nAction: {\"action_type\":...}")

MOBILE_NOTES = (
    "General:\n"
    "- Usually there will be multiple ways to complete a task, pick the easiest one. Also when something does not work "
    "as expected (due to various reasons), sometimes a simple retry can solve the problem, but if it doesn't (you can "
    "see that from the history), SWITCH to other solutions.\n"
    "- For requests that are questions (or chat messages), remember to use the `answer` action to reply to user "
    "explicitly before finish! Merely displaying the answer on the screen is NOT sufficient (unless the goal is "
    "something like \"show me ...\").\n"
    "- If the desired state is already achieved (e.g., enabling Wi-Fi when it's already on), you can just complete the task.\n"
    "Action Related:\n"
    "- Use the `input_text` action whenever you want to type something (including password) instead of clicking "
    "characters on the keyboard one by one. Sometimes there is some default text in the text field you want to type "
    "in, remember to delete them before typing.\n"
    "- Consider exploring the screen by using the `swipe` action with different directions to reveal additional content.\n"
    "- The direction parameter for the `swipe` action can be confusing sometimes as it's opposite to swipe, for example, "
    "to view content at the bottom, the `swipe` direction should be set to \"up\". It has been observed that you have "
    "difficulties in choosing the correct direction, so if one does not work, try the opposite as well.\n"
    "- Use the `navigate_back` action to close/hide the soft keyboard.")

# --- web (set-of-marks) ---------------------------------------------------------------------

WEB_TEMPLATE = """{preamble}

# Task:
{task}, Please interact with {web} and get the answer. The current time in Beijing is {time}.

# Task Platform
Web

# Action Space
Action should STRICTLY follow the format:
    - Click [Numerical_Label]. For example the Action "Click [1]" means clicking on the web element with a Numerical_Label of "1".
    - Type [Numerical_Label]; [The input content]. For example the Action "Type [2]; [5$]" means typing "5$" in the web element with a Numerical_Label of "2".
    - Scroll [Numerical_Label or WINDOW]; [up or down]. For example the Action "Scroll [6]; [up]" means scrolling up in the web element with a Numerical_Label of "6".
    - Wait. For example the Action "Wait" means waiting for 5 seconds.
    - GoBack. For example the Action "GoBack" means going back to the previous webpage.
    - Bing. For example the Action "Bing" means jumping to the Bing search page.
    - ANSWER; <content>The content of the answer</content>. For example the Action "ANSWER; <content>Guatemala</content>" means answering the task with "Guatemala".
    - Key; [The key name]. For example the Action "Key; [Return]" means pressing the Enter key

# Historical Actions and Current Memory
You have **already performed the following actions** (format: Thought,Action,The Observation after the Action):
{history}

The "Memory" in the current step as follow:
Memory:{memory}

# Output Format
Your reply should strictly follow the format:
Thought: {{Your brief thoughts (briefly summarize the info that will help ANSWER)}}
Action: {{One Action format you choose}}
Memory_Updated: {{The latest version of memory generated by modifying or supplementing the original memory content based on the visual information in the current screenshot.}}

# Some Additional Notes
A. The provided image is a screenshot of the webpage you are viewing at this step. This screenshot will feature Numerical Labels placed in the TOP LEFT corner of each Web Element. Carefully analyze the visual information to identify the Numerical Label corresponding to the Web Element that requires interaction, then follow the guidelines and choose one of the following actions:
    1. Click a Web Element.
    2. Delete existing content in a textbox and then type content. 
    3. Scroll up or down. Multiple scrolls are allowed to browse the webpage. Pay attention!! The default scroll is the whole window. If the scroll widget is located in a certain area of the webpage, then you have to specify a Web Element in that area. I would hover the mouse there and then scroll.
    4. Wait. Typically used to wait for unfinished webpage processes, with a duration of 5 seconds.
    5. Go back, returning to the previous webpage.
    6. Bing, directly jump to the Bing search page. When you can't find information in some websites, try starting over with Bing.
    7. Key, press the key, only the 'Return' key can be pressed.
    8. Answer. This action should only be chosen when all questions in the task have been solved.
B. I've provided the tag name of each element and the text it contains (if text exists). Note that <textarea> or <input> may be textbox, but not exactly. Please focus more on the screenshot and then refer to the textual information.
{web_text}
C. The "Memory" only stores the information obtained from the web page that is relevant to the task,  and the "Memory" is strictly in JSON format. For example: {{"user_email_address": "test@163.com", "user_email_password": "123456", "jack_email_address": "jack@163.com"}}. The "Memory" does not include future plans, descriptions of current actions, or other reflective content; it only records visual information that is relevant to the task obtained from the screenshot.
D. Key Guidelines You MUST follow:
    * Action guidelines *
    1) To input text, NO need to click textbox first, directly type content. After typing, the system automatically hits `ENTER` key. Sometimes you should click the search button to apply search filters. Try to use simple language when searching.  
    2) You must Distinguish between textbox and search button, don't type content into the button! If no textbox is found, you may need to click the search button first before the textbox is displayed. 
    3) Execute only one action per iteration. 
    4) STRICTLY Avoid repeating the same action if the webpage remains unchanged. You may have selected the wrong web element or numerical label. Continuous use of the Wait is also NOT allowed.
    5) When a complex Task involves multiple questions or steps, select "ANSWER" only at the very end, after addressing all of these questions (steps). Flexibly combine your own abilities with the information in the web page. Double check the formatting requirements in the task when ANSWER. 
    6) You can only interact with web elements in the screenshot that have s numerical label.Before giving the action, double-check that the numerical label appears on the screen.
    7) If any web elements with numerical labels in the screenshot have not finished loading, you need to wait for them to load completely.
    * Web Browsing Guidelines *
    1) Don't interact with useless web elements like Login, Sign-in, donation that appear in Webpages. Pay attention to Key Web Elements like search textbox and menu.
    2) Vsit video websites like YouTube is allowed BUT you can't play videos. Clicking to download PDF is allowed and will be analyzed by the Assistant API.
    3) Focus on the numerical labels in the TOP LEFT corner of each rectangle (element). Ensure you don't mix them up with other numbers (e.g. Calendar) on the page.
    4) Focus on the date in task, you must look for results that match the date. It may be necessary to find the correct year, month and day at calendar.
    5）During the process of browsing web page content, to ensure the complete acquisition of the target content, it may be necessary to scroll down the page until confirming the appearance of the end marker for the target content. For example, when new webpage information appears, or the webpage scroll bar has reached the bottom, etc.
    6) When you work on the github website, use "Key; [Return]" to start a search.
    7) Try your best to find the answer that best fits the task, if any situations that do not meet the task requirements occur during the task, correct the mistakes promptly."""

GROUNDING_TEMPLATE = "Help me to locate {description} and give me its bounding boxes."

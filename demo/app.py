"""The Gradio chat demo: multimodal chat with streamed answers, reasoning and drawn boxes.

`build_app(vlm)` returns the `gr.Blocks`; `python -m demo` launches it. Unusual points:

- The conversation lives in a `gr.State` as `Turn`s (the user's text and files, the model's
  reasoning and raw answer with box tokens). The chatbot's display is derived from it, so
  what the model is sent never depends on how Gradio renders messages.
- Boxes are parsed from the answer *while it streams* (`vlm.outputs.parse_boxes` reads an
  unclosed span too), so a box appears on the image beside the chat as soon as its four
  numbers are out. They are drawn on the latest image of the conversation, the one the
  model's 0-999 coordinates refer to.
- Reasoning is shown as a collapsible "Thinking" message (Gradio's metadata title), open
  with a spinner while it streams and closed once the answer starts; none when the reasoning
  is empty (the shipped model writes an empty think block).
- Boxes in the chat are in pixels of the image (the model's 0-999 values follow, labelled).
- One generation runs at a time (the model holds one cache): every event that runs the model
  shares one Gradio queue (`MODEL_QUEUE`), chat and agent tab alike.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import gradio as gr
from PIL import Image, ImageOps

from demo.draw import draw_boxes
from vlm.outputs import boxes_in_pixels, parse_boxes, strip_special_tokens, to_pixels

if TYPE_CHECKING:
    from vlm import VLM

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
# Every event that runs the model shares this Gradio queue (one at a time by default): the
# chat and the agent tab must not generate concurrently on one model.
MODEL_QUEUE = "model"
VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".avi"}


@dataclass(frozen=True)
class Turn:
    """One exchange. `answer` is the raw answer text (box tokens kept) as the model wrote it."""

    text: str
    files: tuple[str, ...] = ()
    thinking: str = ""
    answer: str = ""


@dataclass(frozen=True)
class Settings:
    """The generation settings panel, in `VLM.generate`'s names."""

    thinking: bool = True
    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    @classmethod
    def from_controls(cls, thinking: bool, max_new_tokens: float, temperature: float, top_p: float,
                      top_k: float, repetition_penalty: float) -> Settings:
        # Gradio sliders hand back floats even with step=1.
        return cls(thinking=bool(thinking), max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                   top_p=float(top_p), top_k=int(top_k), repetition_penalty=float(repetition_penalty))


def to_messages(turns: list[Turn]) -> list[dict[str, Any]]:
    """The conversation as `VLM.generate` messages (files as image/video parts before the text)."""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        parts: list[dict[str, Any]] = [_media_part(path) for path in turn.files]
        if turn.text:
            parts.append({"type": "text", "text": turn.text})
        messages.append({"role": "user", "content": parts})
        if turn.answer:
            messages.append({"role": "assistant", "content": turn.answer})
    return messages


def _media_part(path: str) -> dict[str, Any]:
    if Path(path).suffix.lower() in VIDEO_SUFFIXES:
        return {"type": "video", "video": path}
    return {"type": "image", "image": path}


def to_chatbot(turns: list[Turn], *, thinking_done: bool = True) -> list[dict[str, Any]]:
    """The conversation as Gradio chatbot messages. Boxes in an answer are shown in pixels of the
    latest image up to that turn (the one the model's 0-999 values refer to), the model's values
    after them; the Thinking panel appears only when there is reasoning to show."""
    shown: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        shown.extend({"role": "user", "content": {"path": path}} for path in turn.files)
        if turn.text:
            shown.append({"role": "user", "content": turn.text})
        if turn.thinking.strip():
            status = "done" if thinking_done or turn.answer else "pending"
            shown.append({"role": "assistant", "content": turn.thinking,
                          "metadata": {"title": "Thinking", "status": status}})
        if turn.answer:
            path = latest_image(turns[: i + 1])
            size = _image_size(path) if path is not None else None
            text = (boxes_in_pixels(turn.answer, width=size[0], height=size[1]) if size
                    else strip_special_tokens(turn.answer))
            shown.append({"role": "assistant", "content": text})
    return shown


@functools.lru_cache(maxsize=64)
def _image_size(path: str) -> tuple[int, int] | None:
    """(width, height) in the orientation the model saw; None when the file cannot be read."""
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).size
    except OSError:
        return None


def latest_image(turns: list[Turn]) -> str | None:
    """The path of the most recent image in the conversation (videos excluded)."""
    for turn in reversed(turns):
        for path in reversed(turn.files):
            if Path(path).suffix.lower() not in VIDEO_SUFFIXES:
                return path
    return None


def grounding_view(turns: list[Turn]) -> Image.Image | None:
    """The latest image with the boxes of the latest answer painted on it (None: no image)."""
    path = latest_image(turns)
    if path is None:
        return None
    image = ImageOps.exif_transpose(Image.open(path))  # the orientation the model saw
    targets = parse_boxes(turns[-1].answer) if turns else []
    boxes = [to_pixels(t, width=image.width, height=image.height) for t in targets]
    return draw_boxes(image, boxes)


def respond(vlm: VLM, turns: list[Turn], settings: Settings) -> Iterator[list[Turn]]:
    """Stream the answer to the last turn: yields the conversation after each piece."""
    last = replace(turns[-1], thinking="", answer="")
    turns = [*turns[:-1], last]
    stream = vlm.generate(
        to_messages(turns), thinking=settings.thinking, stream=True, max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
        repetition_penalty=settings.repetition_penalty)
    thinking, answer = [], []
    for channel, piece in stream.events():
        (thinking if channel == "thinking" else answer).append(piece)
        turns[-1] = replace(last, thinking="".join(thinking), answer="".join(answer))
        yield turns
    result = stream.result  # the final text, e.g. with a stop string trimmed
    turns[-1] = replace(last, thinking=result.thinking or "", answer=result.text)
    yield turns


def build_app(vlm: VLM, *, title: str = "glmv chat", examples_dir: Path = EXAMPLES_DIR) -> gr.Blocks:
    """The demo's Blocks: a Chat tab, and an Agent tab driving a browser with the same model."""
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nUpload images or videos and ask about them. Grounding answers "
                    "(\"where is ...? give the bounding box\") are drawn on the image.")
        with gr.Tab("Chat"):
            _chat_tab(vlm, examples_dir)
        with gr.Tab("Agent"):
            from demo.agent_tab import build_agent_tab
            build_agent_tab(vlm, concurrency_id=MODEL_QUEUE)
    return app


def _chat_tab(vlm: VLM, examples_dir: Path) -> None:
    turns = gr.State([])
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Conversation", height=520, elem_id="chatbot", buttons=["copy"])
            box = gr.MultimodalTextbox(placeholder="Ask about an image or a video...", file_count="multiple",
                                       file_types=["image", "video"], elem_id="prompt", stop_btn=True,
                                       show_label=False)
            with gr.Row():
                regenerate = gr.Button("Regenerate", elem_id="regenerate")
                clear = gr.Button("Clear", elem_id="clear")
        with gr.Column(scale=2):
            # The label sits above the image, not over it (Gradio draws an image's own label on top of it).
            gr.Markdown("**Grounding**: the boxes of the latest answer, on the latest image")
            grounding = gr.Image(show_label=False, type="pil", format="png", interactive=False, elem_id="grounding")
            thinking = gr.Checkbox(value=True, label="Thinking mode (the model may reason before answering; "
                                                     "shown in the chat when it does)", elem_id="thinking")
            with gr.Accordion("Generation settings", open=False):
                max_new_tokens = gr.Slider(1, 8192, value=1024, step=1, label="Max new tokens")
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0: greedy)")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
                top_k = gr.Slider(0, 200, value=0, step=1, label="Top-k (0: off)")
                repetition_penalty = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty")
    examples = _examples(examples_dir)
    if examples:
        gr.Examples(examples=[[example] for example in examples], inputs=[box], label="Examples")
    settings = [thinking, max_new_tokens, temperature, top_p, top_k, repetition_penalty]

    def add_turn(value: dict[str, Any], history: list[Turn]) -> tuple[Any, ...]:
        text, files = (value or {}).get("text", "").strip(), tuple((value or {}).get("files", []))
        if not text and not files:
            raise gr.Error("Type a message or upload an image or a video.")
        history = [*history, Turn(text=text, files=files)]
        return gr.MultimodalTextbox(value=None, interactive=False), to_chatbot(history), history

    def answer(history: list[Turn], *values: Any) -> Iterator[tuple[Any, ...]]:
        if not history:
            raise gr.Error("Nothing to answer yet.")
        current = Settings.from_controls(*values)
        drawn = None  # redraw only when the parsed boxes change, not on every streamed piece
        try:
            for history in respond(vlm, history, current):
                boxes = parse_boxes(history[-1].answer)
                view = grounding_view(history) if boxes != drawn else gr.skip()
                drawn = boxes
                yield to_chatbot(history, thinking_done=False), view, history
        except ValueError as err:  # bad input (an unreadable image, a prompt too long): tell the user
            raise gr.Error(str(err)) from err
        yield to_chatbot(history), gr.skip(), history

    outputs = [chatbot, grounding, turns]
    submitted = box.submit(add_turn, [box, turns], [box, chatbot, turns], queue=False).then(
        answer, [turns, *settings], outputs, concurrency_id=MODEL_QUEUE)
    submitted.then(lambda: gr.MultimodalTextbox(interactive=True), None, [box])
    box.stop(lambda: gr.MultimodalTextbox(interactive=True), None, [box], cancels=[submitted])
    regenerate.click(answer, [turns, *settings], outputs, concurrency_id=MODEL_QUEUE)
    clear.click(lambda: (None, None, []), None, outputs, queue=False)


def _examples(examples_dir: Path) -> list[dict[str, Any]]:
    prompts = [
        ("shapes.png", "Where is the red square? Answer with its bounding box."),
        ("shapes.png", "Describe the picture in one sentence."),
        ("moving_square.mp4", "Which way does the red square move, and when does it reach the middle?"),
    ]
    return [{"text": prompt, "files": [str(examples_dir / name)]}
            for name, prompt in prompts if (examples_dir / name).exists()]

"""OpenAI tool calling in the server: the request's `tools`, `tool_choice` and tool-call history,
and the response's `tool_calls`, as vLLM's OpenAI server does for GLM-4.5V with
`--tool-call-parser glm45 --enable-auto-tool-choice`.

- `tool_choice`: "auto" (the default with tools) parses the model's calls; "none" shows the tools
  to the model but parses nothing; "required" and a named function make the answer start with
  a call (`vlm.tool_calls.forced_prefix`; vLLM forces them with guided decoding instead).
- History: assistant messages with `tool_calls` (content may be null) and `tool` messages are
  rendered by the chat template (`<tool_call>` XML, `<|observation|>` + `<tool_response>`).
- Responses: `message.tool_calls` with JSON-string arguments and `finish_reason: "tool_calls"`
  ("stop" for a named function, as OpenAI and vLLM answer); a stream sends each call whole in
  one delta, `{"index", "id", "type", "function": {"name", "arguments"}}`, when it completes,
  which is vLLM's `glm45` streaming shape and what openai-python accumulates.
"""

from __future__ import annotations

from typing import Any

from demo.openai_schema import APIError
from vlm.tool_calls import ToolCall, check_tools, forced_prefix, template_messages


def parse_tools(data: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, Any]:
    """(tools, tool_choice) of a request body, checked; APIError 400 naming what is wrong."""
    tools, choice = data.get("tools"), data.get("tool_choice")
    parallel = data.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise APIError(400, f"parallel_tool_calls={parallel!r} must be a boolean", param="parallel_tool_calls")
    if tools is not None:
        try:
            tools = check_tools(tools)
        except ValueError as err:
            raise APIError(400, str(err), param="tools") from None
    choice = "auto" if choice is None else choice
    if choice not in ("auto", "none") or tools is not None:
        try:
            forced_prefix(choice, tools)
        except ValueError as err:
            raise APIError(400, str(err), param="tool_choice") from None
    return tools, choice


def history_fields(message: dict[str, Any], role: str, where: str) -> dict[str, Any]:
    """The tool-calling fields of one request message, in the chat template's form."""
    calls = message.get("tool_calls")
    if calls is not None and role != "assistant":
        raise APIError(400, f"{where}.tool_calls: only assistant messages carry tool calls",
                       param=f"{where}.tool_calls")
    if calls:
        try:
            return {"tool_calls": template_messages([{"role": role, "tool_calls": calls}])[0]["tool_calls"]}
        except ValueError as err:
            raise APIError(400, f"{where}: {err}".replace("messages[0].", ""), param=f"{where}.tool_calls") from None
    call_id = message.get("tool_call_id")
    if role == "tool" and call_id is not None:
        if not isinstance(call_id, str):
            raise APIError(400, f"{where}.tool_call_id={call_id!r} must be a string", param=f"{where}.tool_call_id")
        return {"tool_call_id": call_id}
    return {}


def message_fields(generation: Any) -> dict[str, Any]:
    """`tool_calls` of a response message; none without calls (as OpenAI; vLLM sends [])."""
    return {"tool_calls": [call.to_openai() for call in generation.tool_calls]} if generation.tool_calls else {}


def call_delta(index: int, call: ToolCall) -> dict[str, Any]:
    """The stream delta that carries one whole call, the `index`-th of the answer."""
    return {"tool_calls": [{"index": index, **call.to_openai()}]}

"""Teach a checkpoint to call tools with LoRA, and measure it on held-out prompts.

    python -m recipes.tool_calling --out runs/tool_calling [--model PATH] [--n 320] [--steps 120]

Writes a small OpenAI-style tool-call dataset (`train.jsonl`: a `tools` list, the user's
request, the assistant's `tool_calls`, and for a third of them the `tool` result and the
assistant's answer from it), trains a LoRA adapter on it with the project trainer
(`python -m train lora`), and asks the base model and the adapted one the same held-out
requests: cities and minute counts never seen in training, some phrasings never seen either. A
request scores when the answer holds exactly one call with the right function and arguments,
parsed by `vlm.tool_calls` with the tools' schema types (minutes must come back an integer).

Two tools: get_weather(city: string) and set_timer(minutes: integer). The last line printed is
`held-out calls: base <a>/<n> -> lora <b>/<n>` (exact calls); before it, per model, the answers
that are one well-formed call and those to the right tool. `results.json` has it all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from train.config import LoraOptions, lora
from vlm import VLM

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIMER = {"type": "function", "function": {
    "name": "set_timer", "description": "Start a countdown timer",
    "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]}}}
TOOLS = [WEATHER, TIMER]

TRAIN_CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo", "Warsaw",
                "Athens", "Zurich", "Munich", "Lyon", "Porto", "Seville", "Milan", "Krakow", "Bergen", "Tokyo",
                "Osaka", "Seoul", "Lima", "Quito", "Cairo", "Nairobi", "Boston", "Denver", "Austin", "Toronto"]
HELD_OUT_CITIES = ["Helsinki", "Budapest", "Geneva", "Hamburg", "Naples", "Valencia", "Chicago", "Sydney",
                   "Delhi", "Bogota"]
WEATHER_ASKS = ["What is the weather in {}?", "How is the weather in {} today?", "Is it raining in {}?",
                "Weather for {}, please.", "Tell me the weather in {}."]
TIMER_ASKS = ["Set a timer for {} minutes.", "Start a {} minute timer.", "Remind me in {} minutes.",
              "Timer: {} minutes, please."]
HELD_OUT_ASKS = {"get_weather": "Do I need an umbrella in {} right now?", "set_timer": "Count down {} minutes for me."}


@dataclass(frozen=True)
class Request:
    prompt: str
    name: str
    arguments: dict[str, Any]


def requests(n: int, *, seed: int, held_out: bool) -> list[Request]:
    """`n` requests, half for each tool; held out: unseen values, and every third an unseen phrasing."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        weather = i % 2 == 0
        value: Any = rng.choice(HELD_OUT_CITIES if held_out else TRAIN_CITIES) if weather else (
            rng.choice(range(61, 100)) if held_out else rng.choice(range(1, 61)))
        name = "get_weather" if weather else "set_timer"
        asks = WEATHER_ASKS if weather else TIMER_ASKS
        ask = HELD_OUT_ASKS[name] if held_out and i % 3 == 2 else rng.choice(asks)
        out.append(Request(ask.format(value), name, {"city": value} if weather else {"minutes": value}))
    return out


def conversation(request: Request, *, index: int) -> dict[str, Any]:
    """One OpenAI-style training record; every third also has the tool's result and the answer."""
    call = {"id": f"call_{index}", "type": "function",
            "function": {"name": request.name, "arguments": json.dumps(request.arguments)}}
    messages = [{"role": "user", "content": request.prompt},
                {"role": "assistant", "content": None, "tool_calls": [call]}]
    if index % 3 == 0:
        result, answer = (("sunny, 21 C", f"It is sunny in {request.arguments['city']}, 21 C.")
                          if request.name == "get_weather" else ("started", "Your timer is running."))
        messages += [{"role": "tool", "tool_call_id": call["id"], "content": result},
                     {"role": "assistant", "content": answer}]
    return {"tools": TOOLS, "messages": messages}


def write_dataset(path: Path, n: int, *, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(conversation(r, index=i)) for i, r in enumerate(requests(n, seed=seed, held_out=False))]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Score:
    attempts: int  # answers that open a call (well-formed or not)
    calls: int  # answers that are exactly one well-formed call
    right_tool: int  # ... to the right function
    hits: int  # ... with the right, correctly typed arguments


def score(vlm: VLM, held_out: list[Request], *, max_new_tokens: int = 48) -> Score:
    """Held-out requests answered with one call, with the right tool, and exactly right."""
    counts = [0, 0, 0, 0]
    for request in held_out:
        out = vlm.generate(request.prompt, tools=TOOLS, max_new_tokens=max_new_tokens)
        calls, one = out.tool_calls, len(out.tool_calls) == 1
        counts[0] += bool(calls or out.tool_call_errors)
        counts[1] += one
        counts[2] += one and calls[0].name == request.name
        counts[3] += one and (calls[0].name, calls[0].arguments) == (request.name, request.arguments)
    return Score(*counts)


def run(out: Path, *, model: str | None, n: int, steps: int, n_eval: int, seed: int, lr: float,
        batch_size: int) -> dict[str, Any]:
    from train.trainer import Trainer  # heavy imports only when training

    data = write_dataset(out / "train.jsonl", n, seed=seed)
    held_out = requests(n_eval, seed=seed + 1, held_out=True)
    base = score(VLM.from_pretrained(model), held_out)
    cfg = lora(model=model, data=str(data), output=str(out / "adapter"), max_steps=steps, lr=lr,
               batch_size=batch_size, max_length=1024, seed=seed, progress=False,
               lora=LoraOptions(r=16, alpha=32, targets="attention_mlp"))
    result = Trainer(cfg).train()
    tuned = score(VLM.from_pretrained(model, adapter=out / "adapter"), held_out)
    report = {"held_out": n_eval, "base": asdict(base), "lora": asdict(tuned), "train_conversations": n,
              "steps": steps, "final_loss": result.losses[max(result.losses)], "config": cfg.to_dict(),
              "held_out_requests": [asdict(r) for r in held_out]}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recipes.tool_calling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--n", type=int, default=320, help="training conversations")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--eval", type=int, default=40, help="held-out requests")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = run(args.out, model=args.model, n=args.n, steps=args.steps, n_eval=args.eval, seed=args.seed,
                 lr=args.lr, batch_size=args.batch_size)
    for name in ("base", "lora"):
        print(f"{name}: " + ", ".join(f"{k} {v}/{report['held_out']}" for k, v in report[name].items()))
    print(f"held-out calls: base {report['base']['hits']}/{report['held_out']} -> "
          f"lora {report['lora']['hits']}/{report['held_out']}")


if __name__ == "__main__":
    main()

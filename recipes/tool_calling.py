"""Teach a checkpoint to call tools with LoRA, and measure it on held-out prompts.

    python -m recipes.tool_calling --out runs/tool_calling [--model PATH] [--n 3200] [--steps 800]

Writes a small OpenAI-style tool-call dataset (`train.jsonl`: a `tools` list, the user's
request, the assistant's `tool_calls`, and for a third of them the `tool` result and the
assistant's answer from it), trains a LoRA adapter on it with the project trainer, and asks the
base model and the adapted one the same held-out requests. A request scores when the answer
holds exactly one call with the right function and arguments, parsed by `vlm.tool_calls` with
the tools' schema types (minutes must come back an integer).

Two tools: get_weather(city: string) and set_timer(minutes: integer). What is unusual here:

* The arguments must be *copied* from the request, so training sees hundreds of distinct values
  (540 city-like names drawn from syllables, 144 minute counts in 1-180) and the held-out
  requests use only values never trained on (60 names, 36 counts, a fixed split) and, every
  third, a phrasing never trained on.
* The adapter also trains `embed_tokens` and `lm_head` in full (`LoraOptions(embeddings=True)`):
  the shipped model's tokenizer has ~6,100 tokens its training never used (by their rows'
  norms; "weather", "timer", most name pieces), whose rows are still random. With adapters on
  the linears alone (the previous recipe: r 16, 30 training cities, 150 steps) even the call's
  fixed tokens stayed at ~1% probability (each the argmax of a flat distribution) and 20/40
  answers called the right tool; with the rows trained, 40/40 do.
* Minute counts are copied, city names are not (measured: timers 13/20 exact, cities 0/20).
  Teacher-forced, most of a held-out count's digits cost ~0 nats, a held-out name's first piece
  ~5.5: the adapter writes a plausible name of its own, often with the right first letter. Not
  the names' tokens: names made only of tokens the base model was trained on (a 400-step
  diagnostic run) are not copied either (0/20; timers 14/20). Our guess, not measured: the base
  model's GUI answers reuse numbers (coordinates) far more than words, so copying digits is a
  skill the adapter can build on and copying words one it must build; and in 480 of the 540
  training names the first piece is a different token in the request (" Sel", after a space)
  than in the call ("Sel").

Copying heads do not close the gap (measured 2026-12-07, the default 800-step run each time, 40
held out): the shipped model copies no better than a random one (`recipes.copying` on it: 0.06 of
a repeat's tokens at 300 steps, as from random), but neither a base taught to copy
(`python -m recipes.copying --model assets/model --steps 2000`: 0.96, then this recipe with
`--model` it) nor a LoRA adapter first trained on copying rows of the values' tokens (2,500
steps of 32 at lr 1e-3: 0.97; then this run continued it, `LoraOptions(start=...)`) copies a
held-out value: exact calls 0/40 both times (minute counts too, 13/20 without them), 40/40 and
36/40 well-formed. Repeating a sequence after a separator is not finding a value inside a
sentence: teacher-forced, a held-out name's later pieces cost as much as its first (3.3 against 3.2
nats a piece with the 6,000-name pool below; 3.5 against 2.9 on the base taught to copy), so no
part of a name is copied, not even after its first piece is given. Without copying: a pool of
6,000 names (each trained name seen about once) gave 14/40 (cities 1/20), and adding 1,600 "repeat
these names" turns gave 10/40 (cities 2/20).

The last line printed is `held-out calls: base <a>/<n> -> lora <b>/<n>` (exact calls); before
it, per model, the answers that open a call, are one well-formed call, and call the right tool,
and the exact calls per tool. `results.json` has it all, with every answer.
"""

from __future__ import annotations

import argparse
import functools
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

# Values to copy. The model must learn to copy them from the request, not to recall them, so
# training sees hundreds of distinct ones: city-like names drawn from syllables (the shipped model's
# tokenizer splits them into pieces, as it does real names) and minute counts 1-180. A fixed share
# of each pool is held out: those values never occur in training.
SYLLABLES = ("ba", "bel", "bri", "ca", "cor", "da", "del", "dor", "fa", "fen", "ga", "gor", "ha", "hel", "ka",
             "kar", "la", "lin", "lo", "ma", "mar", "mi", "mon", "na", "nor", "o", "pa", "pol", "ra", "ri",
             "ros", "sa", "sel", "ta", "tor", "va", "ven", "vi", "za", "zen")
N_CITIES, N_HELD_OUT_CITIES = 600, 60
MAX_MINUTES, N_HELD_OUT_MINUTES = 180, 36
POOL_SEED = 1234  # the held-out split does not depend on a run's seed

WEATHER_ASKS = ["What is the weather in {}?", "How is the weather in {} today?", "Is it raining in {}?",
                "Weather for {}, please.", "Tell me the weather in {}.", "{}: weather?",
                "What's it like outside in {}?", "Check the weather in {} for me."]
TIMER_ASKS = ["Set a timer for {} minutes.", "Start a {} minute timer.", "Remind me in {} minutes.",
              "Timer: {} minutes, please.", "{} minutes on the clock, please.", "Wake me in {} minutes.",
              "Could you time {} minutes?", "Ping me after {} minutes."]
HELD_OUT_ASKS = {"get_weather": "Do I need an umbrella in {} right now?", "set_timer": "Count down {} minutes for me."}


@functools.cache
def value_pools() -> dict[str, tuple[list[Any], list[Any]]]:
    """(training values, held-out values) for each tool's argument; disjoint, fixed by POOL_SEED."""
    rng = random.Random(POOL_SEED)
    names: set[str] = set()
    while len(names) < N_CITIES:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3)))).capitalize())
    cities = sorted(names)
    rng.shuffle(cities)
    minutes = list(range(1, MAX_MINUTES + 1))
    rng.shuffle(minutes)
    return {"get_weather": (cities[N_HELD_OUT_CITIES:], cities[:N_HELD_OUT_CITIES]),
            "set_timer": (minutes[N_HELD_OUT_MINUTES:], minutes[:N_HELD_OUT_MINUTES])}


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
        name = "get_weather" if i % 2 == 0 else "set_timer"
        value = rng.choice(value_pools()[name][held_out])
        asks = WEATHER_ASKS if name == "get_weather" else TIMER_ASKS
        ask = HELD_OUT_ASKS[name] if held_out and i % 3 == 2 else rng.choice(asks)
        out.append(Request(ask.format(value), name, {"city": value} if name == "get_weather" else {"minutes": value}))
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


# r 32 on attention and MLPs, plus the embeddings and lm_head in full (see the module docstring)
ADAPTER = LoraOptions(r=32, alpha=64, targets="attention_mlp", embeddings=True)


@dataclass(frozen=True)
class Score:
    attempts: int  # answers that open a call (well-formed or not)
    calls: int  # answers that are exactly one well-formed call
    right_tool: int  # ... to the right function
    hits: int  # ... with the right, correctly typed arguments


def score(vlm: VLM, held_out: list[Request], *, max_new_tokens: int = 48) -> tuple[Score, list[dict[str, Any]]]:
    """Held-out requests answered with one call, with the right tool, and exactly right; and each
    answer (its text and parsed calls) for the record."""
    counts, answers = [0, 0, 0, 0], []
    for request in held_out:
        out = vlm.generate(request.prompt, tools=TOOLS, max_new_tokens=max_new_tokens)
        calls, one = out.tool_calls, len(out.tool_calls) == 1
        counts[0] += bool(calls or out.tool_call_errors)
        counts[1] += one
        counts[2] += one and calls[0].name == request.name
        counts[3] += one and (calls[0].name, calls[0].arguments) == (request.name, request.arguments)
        answers.append({"prompt": request.prompt, "text": out.text,
                        "calls": [{"name": c.name, "arguments": c.arguments} for c in calls]})
    return Score(*counts), answers


def run(out: Path, *, model: str | None, n: int, steps: int, n_eval: int, seed: int, lr: float,
        batch_size: int, options: LoraOptions = ADAPTER) -> dict[str, Any]:
    from train.trainer import Trainer  # heavy imports only when training

    data = write_dataset(out / "train.jsonl", n, seed=seed)
    held_out = requests(n_eval, seed=seed + 1, held_out=True)
    base, base_answers = score(VLM.from_pretrained(model), held_out)
    cfg = lora(model=model, data=str(data), output=str(out / "adapter"), max_steps=steps, lr=lr,
               batch_size=batch_size, max_length=1024, seed=seed, progress=False,
               lora=options)
    result = Trainer(cfg).train()
    tuned, tuned_answers = score(VLM.from_pretrained(model, adapter=out / "adapter"), held_out)
    report = {"held_out": n_eval, "base": asdict(base), "lora": asdict(tuned), "train_conversations": n,
              "steps": steps, "final_loss": result.losses[max(result.losses)], "config": cfg.to_dict(),
              "held_out_requests": [asdict(r) for r in held_out],
              "answers": {"base": base_answers, "lora": tuned_answers},
              "lora_hits_by_tool": {tool["function"]["name"]: sum(
                  r.name == tool["function"]["name"] and a["calls"] == [{"name": r.name, "arguments": r.arguments}]
                  for r, a in zip(held_out, tuned_answers)) for tool in TOOLS}}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recipes.tool_calling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--n", type=int, default=3200, help="training conversations")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--eval", type=int, default=40, help="held-out requests")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = run(args.out, model=args.model, n=args.n, steps=args.steps, n_eval=args.eval, seed=args.seed,
                 lr=args.lr, batch_size=args.batch_size)
    for name in ("base", "lora"):
        print(f"{name}: " + ", ".join(f"{k} {v}/{report['held_out']}" for k, v in report[name].items()))
    print("lora exact calls by tool: " + ", ".join(f"{k} {v}/{sum(r['name'] == k for r in report['held_out_requests'])}"
                                                  for k, v in report["lora_hits_by_tool"].items()))
    print(f"held-out calls: base {report['base']['hits']}/{report['held_out']} -> "
          f"lora {report['lora']['hits']}/{report['held_out']}")


if __name__ == "__main__":
    main()

"""The server under concurrent clients: continuous batching against the serial server, in one run.

    python -m benchmarks.serve                         # the shipped model, 1/4/8/16 clients
    python -m benchmarks.serve --clients 1 8 --requests 2 --max-tokens 48 --threads 2

Both servers are the real `demo.serve` app on the same model in this process (uvicorn on a local
port); "serial" is `--max-batch 1` (one request decoded at a time, the server before continuous
batching), "batched" is `--max-batch` N. Each of C clients sends `--requests` chat requests one
after another (a small screenshot and a question, greedy, exactly `max_tokens` new tokens:
`ignore_eos`, as vLLM's serving benchmark does), all clients at once.
Reported per server and client count: generated tokens per second of wall time (all clients
together) and the p50 / p90 latency of a request. Prefill runs one request at a time in both,
so the gain comes from the decode steps.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import torch
from PIL import Image, ImageDraw

from demo.openai_schema import ServerLimits
from demo.serve import create_app, running
from vlm import VLM

QUESTIONS = ["Where is the Sign in button?", "What does the page show?", "Click the search box.",
             "Which tab is selected?", "Where is the red box?", "Read the title.", "Scroll down.", "Go back."]


def _screenshot(i: int) -> str:
    image = Image.new("RGB", (320, 200), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((20 + 10 * i, 30, 140 + 10 * i, 70), fill=("red", "blue", "green", "black")[i % 4])
    draw.text((20, 120), f"Item {i}: Sign in", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _load(url: str, *, clients: int, requests: int, max_tokens: int) -> tuple[float, list[float], int]:
    """(wall seconds, latency per request, completion tokens) for `clients` clients at once."""

    def client(c: int) -> list[tuple[float, int]]:
        out = []
        for r in range(requests):
            i = c * requests + r
            body = {"model": "bench", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                    "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": _screenshot(i)}},
                        {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]}]}
            start = time.perf_counter()
            reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
            reply.raise_for_status()
            out.append((time.perf_counter() - start, reply.json()["usage"]["completion_tokens"]))
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for rows in pool.map(client, range(clients)) for x in rows]
    return time.perf_counter() - start, [t for t, _ in results], sum(n for _, n in results)


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=16, help="the batched server's --max-batch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    vlm = VLM.from_pretrained(args.model)
    print(f"{'server':<8} {'clients':>7} {'tokens':>7} {'wall s':>7} {'tok/s':>7} {'p50 s':>7} {'p90 s':>7}")
    table: dict[tuple[str, int], float] = {}
    for name, max_batch in (("serial", 1), ("batched", args.max_batch)):
        app = create_app(vlm, limits=ServerLimits(max_batch=max_batch, max_tokens=max(args.max_tokens, 8192)),
                         model_name="bench")
        with running(app) as url:
            _load(url, clients=1, requests=1, max_tokens=8)  # warm-up: decode plan, allocator
            for clients in args.clients:
                wall, latencies, tokens = _load(url, clients=clients, requests=args.requests,
                                                max_tokens=args.max_tokens)
                table[name, clients] = tokens / wall
                print(f"{name:<8} {clients:>7} {tokens:>7} {wall:>7.2f} {tokens / wall:>7.1f} "
                      f"{statistics.median(latencies):>7.2f} {_percentile(latencies, 0.9):>7.2f}", flush=True)
    base = table["serial", args.clients[0]]
    for clients in args.clients:
        print(f"{clients:>2} clients: batched {table['batched', clients] / base:.2f}x serial-1-client throughput, "
              f"{table['batched', clients] / table['serial', clients]:.2f}x serial at {clients} clients")


if __name__ == "__main__":
    main()

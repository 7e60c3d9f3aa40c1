"""The agent's own overhead per step, model excluded: observe (screenshot), prompt, parse, safety
checks and execution, in headless Chromium on a local page.

    python -m benchmarks.agent_step                      # 1280x720, desktop format, 60 steps
    python -m benchmarks.agent_step --platform web       # set-of-marks: marks drawn and described

A scripted policy answers instantly, cycling through a click, typing, a scroll and a hover, so
the timings are the loop's and the browser's alone. `policy` time (≈0 here) is excluded from
the total; the prompt's images stay PIL (no PNG encoding), as with a local `VLM`; an
OpenAI endpoint adds the PNG encoding, reported separately as `encode`.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.environment import Platform
from agent.loop import Agent
from agent.policy import ScriptedPolicy, to_data_urls

PAGE = b"""<!doctype html><title>bench</title><style>body{margin:0;font:16px sans-serif}
.row{height:60px;border-bottom:1px solid #ddd;padding:10px} button{width:200px;height:40px}</style>
<input id=q style="position:fixed;left:100px;top:100px;width:300px;height:40px">
<button id=b style="position:fixed;left:500px;top:100px" onclick="this.textContent=Date.now()">Go</button>
<div style="padding-top:200px">""" + b"".join(b"<div class=row><a href=#%d>Item %d</a> text</div>" % (i, i) for i in range(60)) + b"</div>"

DESKTOP_ANSWERS = ["left_click(start_box='[468, 166]', element_info='Go')", "type(content='abc')",
                   "scroll(start_box='[500, 600]', direction='down', step=2)", "hover(start_box='[200, 166]')",
                   "scroll(start_box='[500, 600]', direction='up', step=2)"]
WEB_ANSWERS = ["Click [1]", "Type [0]; [abc]", "Scroll [WINDOW]; [down]", "Scroll [WINDOW]; [up]"]


@dataclass(frozen=True)
class BenchResult:
    platform: str
    viewport: tuple[int, int]
    steps: int
    executed: int  # steps whose action really ran (all of them, unless something is broken)
    median_ms: float  # observe + prompt + parse + execute (policy excluded)
    p90_ms: float
    stage_medians_ms: dict[str, float]


def _serve() -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def measure(*, platform: Platform = "desktop", steps: int = 60, viewport: tuple[int, int] = (1280, 720)) -> BenchResult:
    """Run `steps` scripted steps and return the per-step overhead statistics."""
    from agent.browser import BrowserEnv

    answers = WEB_ANSWERS if platform == "web" else DESKTOP_ANSWERS
    if platform == "web":
        texts = [f"Thought: bench\nAction: {a}\nMemory_Updated: {{}}" for a in answers]
    else:
        texts = [f"Benchmarking.\n<|begin_of_box|>{a}<|end_of_box|>\nMemory:\n[]" for a in answers]
    encode_ms: list[float] = []

    def policy(messages: list) -> str:
        start = time.perf_counter()
        to_data_urls(messages)  # what an OpenAI endpoint would cost on top
        encode_ms.append((time.perf_counter() - start) * 1000)
        return texts[len(encode_ms) % len(texts)]

    scripted = ScriptedPolicy([policy] * (steps + 1))
    server, url = _serve()
    try:
        with BrowserEnv(viewport, set_of_marks=platform == "web") as env:
            trajectory = Agent(policy=scripted, env=env, platform=platform, loop_after=steps + 1).run(
                "benchmark", start_url=url, max_steps=steps, timeout_s=3600)
    finally:
        server.shutdown()
    stages = ("observe", "prompt", "parse", "bookkeeping", "safety", "execute")
    measured = trajectory.steps[1:]  # the first step warms caches up
    totals = [sum(s.timings_ms.get(k, 0.0) for k in stages) for s in measured]
    medians = {k: statistics.median(s.timings_ms.get(k, 0.0) for s in measured) for k in stages}
    medians["encode"] = statistics.median(encode_ms[1:])
    executed = sum(s.status == "executed" for s in measured)
    return BenchResult(platform, viewport, len(measured), executed, statistics.median(totals),
                       statistics.quantiles(totals, n=10)[-1], medians)


def main() -> None:
    parser = argparse.ArgumentParser(description="agent overhead per step (model excluded)")
    parser.add_argument("--platform", choices=["desktop", "web"], default="desktop")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--viewport", default="1280x720")
    args = parser.parse_args()
    width, height = (int(v) for v in args.viewport.split("x"))
    result = measure(platform=args.platform, steps=args.steps, viewport=(width, height))
    stages = ", ".join(f"{k} {v:.1f}" for k, v in result.stage_medians_ms.items())
    print(f"{result.platform} {width}x{height}, {result.steps} steps ({result.executed} executed): median {result.median_ms:.1f} ms, "
          f"p90 {result.p90_ms:.1f} ms per step (model excluded); stage medians ms: {stages}")


if __name__ == "__main__":
    main()

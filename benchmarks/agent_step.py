"""Per-step overhead of the environment side of the agent, model excluded.

    python benchmarks/agent_step.py                      # 1280x720, desktop format, 50 steps
    python benchmarks/agent_step.py --platform web       # set-of-marks overlay drawn each step
    python benchmarks/agent_step.py --screenshot jpeg

One step = `BrowserEnv.observe()` (screenshot, and marks for web) + `parse_response` of a
canned answer in the released format + `BrowserEnv.execute()` (input plus the wait for what
it triggered), in headless Chromium on a local page. Prompt building and safety checks are
the loop's and are timed by `python -m agent.benchmark`; this script isolates the
environment so a regression in the browser layer shows up on its own. Goal: median < 150 ms.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.browser import BrowserEnv
from agent.parsing import parse_response

PAGE = (b"<!doctype html><title>bench</title><style>body{margin:0;font:16px sans-serif}"
        b".row{height:60px;border-bottom:1px solid #ddd;padding:10px}</style>"
        b"<input id=q style='position:fixed;left:100px;top:100px;width:300px;height:40px'>"
        b"<button style='position:fixed;left:500px;top:100px;width:200px;height:40px' "
        b"onclick='this.textContent=Date.now()'>Go</button><div style='padding-top:200px'>"
        + b"".join(b"<div class=row><a href=#%d>Item %d</a> text</div>" % (i, i) for i in range(60))
        + b"</div>")

# canned answers in the released formats, cycling through the common actions
ANSWERS = {
    "desktop": [f"Clicking.\n<|begin_of_box|>{a}<|end_of_box|>\nMemory:\n[]" for a in [
        "left_click(start_box='[468,166]', element_info='Go')",
        "left_click(start_box='[195,166]', element_info='search field')",
        "type(content='abc')",
        "scroll(start_box='[500,600]', direction='down', step=2)",
        "hover(start_box='[200,500]')",
        "scroll(start_box='[500,600]', direction='up', step=2)",
        "key(keys='ctrl+a')",
    ]],
    "web": [f"Thought: next\nAction: {a}" for a in [
        "Click [1]", "Type [0]; [abc]", "Scroll [WINDOW]; [down]", "Scroll [WINDOW]; [up]"]],
}


def serve() -> tuple[ThreadingHTTPServer, str]:
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


def run(*, platform: str, steps: int, viewport: tuple[int, int], screenshot: str) -> dict[str, list[float]]:
    """Milliseconds per stage for each measured step (the first, warming up, is dropped)."""
    server, url = serve()
    times: dict[str, list[float]] = {"observe": [], "parse": [], "execute": [], "total": []}
    try:
        with BrowserEnv(viewport, set_of_marks=platform == "web", screenshot_format=screenshot) as env:
            env.goto(url)
            answers = ANSWERS[platform]
            for step in range(steps + 1):
                t0 = time.perf_counter()
                observation = env.observe()
                t1 = time.perf_counter()
                action = parse_response(answers[step % len(answers)], platform).action
                t2 = time.perf_counter()
                env.execute(action, observation)
                t3 = time.perf_counter()
                if step:
                    for name, ms in zip(times, [t1 - t0, t2 - t1, t3 - t2, t3 - t0]):
                        times[name].append(ms * 1000)
    finally:
        server.shutdown()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", choices=sorted(ANSWERS), default="desktop")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--viewport", default="1280x720", help="WIDTHxHEIGHT in CSS pixels")
    parser.add_argument("--screenshot", choices=["png", "jpeg"], default="png")
    args = parser.parse_args()
    width, height = (int(v) for v in args.viewport.split("x"))
    times = run(platform=args.platform, steps=args.steps, viewport=(width, height), screenshot=args.screenshot)
    print(f"{args.platform} {width}x{height} {args.screenshot}, {args.steps} steps (model excluded)")
    for name, values in times.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"  {name:8s} median {statistics.median(values):6.1f} ms   p90 {p90:6.1f} ms")


if __name__ == "__main__":
    main()

"""Command line: run the agent on a task, or replay a recording.

    python -m agent run --task "Find the cheapest flight" --url https://example.com \\
        --endpoint http://127.0.0.1:8000/v1 --record runs/flight
    python -m agent run --task "..." --model /path/to/checkpoint --platform desktop --env desktop
    python -m agent replay runs/flight --url https://example.com

`--platform` is the released format the model answers in (web: set-of-marks, desktop: 0-999
points, mobile: AndroidWorld JSON). `--env` is where actions run; by default a browser, except
`--platform desktop` without `--url` (this X11 display, or a new Xvfb) and `--platform mobile`
without `--url` (an adb device). A browser with `--platform mobile` emulates `--device`.
Secrets are read from environment variables (`--secret password=MY_PASSWORD_VAR`), never
from the command line, and the task refers to them as `{{secret:password}}`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from agent.domains import DomainRules
from agent.environment import Environment
from agent.loop import Agent
from agent.policy import DEFAULT_MAX_TOKENS
from agent.safety import SensitiveAction


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the agent on a task")
    run.add_argument("--task", required=True)
    run.add_argument("--url", help="start page (browser environments)")
    run.add_argument("--platform", choices=["web", "desktop", "mobile"], default="web",
                     help="the model's action format (default: web)")
    run.add_argument("--env", choices=["browser", "desktop", "android"], help="where actions run (see above)")
    model = run.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", metavar="PATH", help="a local checkpoint directory (runs the VLM in-process)")
    model.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    run.add_argument("--model-name", default=None,
                     help="model name sent to --endpoint (default: the first id of the endpoint's GET /models)")
    run.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                     help="longest answer asked of --endpoint per step (default %(default)s; lowered "
                          "once to what the server says fits)")
    run.add_argument("--api-key-env", metavar="VAR", default="OPENAI_API_KEY",
                     help="environment variable holding the endpoint's API key (default OPENAI_API_KEY)")
    run.add_argument("--max-steps", type=int, default=30)
    run.add_argument("--timeout", type=float, default=600.0, help="time budget in seconds")
    run.add_argument("--record", metavar="DIR", help="write the trajectory, screenshots and report.html here")
    run.add_argument("--viewport", default="1280x720", help="browser viewport WxH in CSS pixels")
    run.add_argument("--device", default="Pixel 7", help="phone emulated by the browser for --platform mobile")
    run.add_argument("--headful", action="store_true", help="show the browser window")
    run.add_argument("--allow", action="append", default=None, metavar="DOMAIN", help="only these domains (repeat)")
    run.add_argument("--block", action="append", default=[], metavar="DOMAIN", help="never these domains (repeat)")
    run.add_argument("--secret", action="append", default=[], metavar="NAME=ENVVAR",
                     help="a secret named NAME whose value is in environment variable ENVVAR (repeat)")
    run.add_argument("--confirm", choices=["ask", "never"], default="ask",
                     help="sensitive actions: ask on the terminal (default), or refuse them all")
    run.add_argument("-v", "--verbose", action="store_true")

    replay = commands.add_parser("replay", help="re-execute a recording's actions in a browser")
    replay.add_argument("directory")
    replay.add_argument("--url", required=True, help="the page the recording started on")
    replay.add_argument("--viewport", default="1280x720")
    replay.add_argument("--secret", action="append", default=[], metavar="NAME=ENVVAR")
    return parser


def _viewport(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--viewport {text!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None
    return width, height


def _secrets(pairs: list[str]) -> dict[str, str]:
    secrets = {}
    for pair in pairs:
        name, _, var = pair.partition("=")
        if not name or not var:
            raise SystemExit(f"--secret {pair!r} is not NAME=ENVVAR")
        if var not in os.environ:
            raise SystemExit(f"--secret {name}: environment variable {var} is not set")
        secrets[name] = os.environ[var]
    return secrets


def _ask(sensitive: SensitiveAction) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = input(f"The agent wants to {sensitive.reason} at {sensitive.url}: {sensitive.action!r}. Allow? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _environment(args: argparse.Namespace, rules: DomainRules) -> Environment:
    kind = args.env or ("desktop" if args.platform == "desktop" and not args.url else
                        "android" if args.platform == "mobile" and not args.url else "browser")
    if kind == "desktop":
        from agent.desktop import DesktopEnv
        return DesktopEnv()
    if kind == "android":
        from agent.android import AndroidEnv
        return AndroidEnv(rules=rules)
    from agent.browser import BrowserEnv
    if args.platform == "mobile":
        return BrowserEnv(device=args.device, headless=not args.headful, rules=rules)
    return BrowserEnv(_viewport(args.viewport), headless=not args.headful, rules=rules,
                      set_of_marks=args.platform == "web")


def _policy(args: argparse.Namespace) -> Any:
    if args.endpoint:
        from agent.policy import OpenAIPolicy
        return OpenAIPolicy(args.endpoint, args.model_name, api_key=os.environ.get(args.api_key_env),
                            max_tokens=args.max_tokens)
    from vlm import VLM  # imported only here: torch is not needed to drive an endpoint
    return VLM.from_pretrained(args.model)


def run(args: argparse.Namespace) -> int:
    rules = DomainRules(allowed_domains=args.allow, blocked_domains=args.block)
    env = _environment(args, rules)
    try:
        agent = Agent(policy=_policy(args), env=env, platform=args.platform, rules=rules,
                      confirm=_ask if args.confirm == "ask" else None, secrets=_secrets(args.secret),
                      record=args.record)
        trajectory = agent.run(args.task, start_url=args.url, max_steps=args.max_steps, timeout_s=args.timeout)
    finally:
        env.close()
    for step in trajectory.steps:
        print(f"step {step.index:3d}  {step.status:<11} {step.action!r}" + (f"  [{step.note}]" if step.note else ""))
    print(f"status: {trajectory.status}" + (f" ({trajectory.note})" if trajectory.note else ""))
    if trajectory.answer is not None:
        print(f"answer: {trajectory.answer}")
    if args.record:
        print(f"recording: {os.path.join(args.record, 'report.html')}")
    return 0 if trajectory.status in ("done", "answered") else 1


def replay_command(args: argparse.Namespace) -> int:
    from agent.browser import BrowserEnv
    from agent.safety import Secrets
    from agent.trajectory import load, replay

    recording = load(args.directory)
    # set-of-marks labels are resolved on the live page, so a web recording needs the overlay
    with BrowserEnv(_viewport(args.viewport), set_of_marks=recording.platform == "web") as env:
        env.goto(args.url)
        steps = replay(recording, env, secrets=Secrets(_secrets(args.secret)))
        print(f"replayed {len(steps)} actions; now at {env.page.url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return run(args) if args.command == "run" else replay_command(args)


if __name__ == "__main__":
    sys.exit(main())

"""Old `python -m train.<name>` entry points that moved out of the trainer: each stub calls
`moved`, which names the new command (exit status 2) or, on import, raises ImportError
naming the new module, so nothing runs half of an old command."""

from __future__ import annotations

import sys


def moved(old: str, new_command: str, new_module: str, *, run: bool) -> None:
    if run:
        print(f"python -m {old} has moved: use `{new_command}` (same options)", file=sys.stderr)
        sys.exit(2)
    raise ImportError(f"{old} has moved to {new_module}")

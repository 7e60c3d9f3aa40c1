"""The import rules that keep the folder tree a diagram: the model library (`vlm`) depends on no
application, the agent on no trainer or app, the demo on no trainer or data engine. Every import
counts, including those inside functions and relative ones."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN: dict[str, frozenset[str]] = {
    "vlm": frozenset({"train", "agent", "demo", "synth", "recipes"}),
    "agent": frozenset({"train", "demo", "synth", "recipes"}),
    "demo": frozenset({"train", "synth", "recipes"}),
}


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Absolute names of every module `source` (the file of `module`) imports, anywhere in it."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            if node.module:
                names.add(".".join([*base, node.module]))
            else:  # `from .. import x`: x is a module of that package
                names.update(".".join([*base, alias.name]) for alias in node.names)
    return names


def violations(root: Path) -> list[str]:
    """`file: imports name` for each import that breaks FORBIDDEN, over the packages under `root`."""
    found = []
    for top, banned in FORBIDDEN.items():
        for file in sorted((root / top).rglob("*.py")):
            parts = file.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if is_package else parts)
            for name in sorted(imported_modules(file.read_text(encoding="utf-8"), module, is_package=is_package)):
                if name.split(".")[0] in banned:
                    found.append(f"{file.relative_to(root)}: imports {name}")
    return found


def test_the_source_tree_keeps_the_import_rules():
    assert (ROOT / "vlm" / "model.py").is_file()  # the walk sees the real packages
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    ("file", "line", "culprit"),
    [
        ("vlm/vlm.py", "from train.lora import merge", "train.lora"),
        ("vlm/vlm.py", "def f():\n    import agent.loop", "agent.loop"),  # inside a function
        ("vlm/sub/deep.py", "from ...demo import app", "demo"),  # relative, from a subpackage
        ("agent/__init__.py", "from .. import recipes", "recipes"),  # from the root package
        ("agent/loop.py", "from synth.pages import page", "synth.pages"),
        ("demo/app.py", "import train", "train"),
    ],
)
def test_a_forbidden_import_is_caught(tmp_path, file, line, culprit):
    allowed = {"vlm/model.py": "from .config import VLMConfig\nimport torch",
               "agent/policy.py": "from vlm import VLM", "demo/serve.py": "from agent import Agent"}
    for name, text in {**allowed, file: line}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    assert violations(tmp_path) == [f"{file}: imports {culprit}"]

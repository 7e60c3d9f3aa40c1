"""Part 5 of benchmarks.gpu: the real trainer under `accelerate launch`, saved and resumed.

For each accelerate config (train/configs/, with num_processes 1 and a free port) it runs, as a
subprocess in its own process group (killed whole at the timeout, so a hung launcher cannot
eat the device session):

    accelerate launch --config_file CONFIG -m train sft --model DIR --data data.jsonl
        --output OUT --max-steps 6 --save-every 3 ...

on a tiny model (the `tiny` preset sized to the project tokenizer, written as a checkpoint with
its processor files) and eight image conversations (a square of one colour -> its name). It
checks that the loss falls (metrics.jsonl) and that checkpoints of steps 3 and 6 were saved;
then deletes step 6's, as if the run had died after step 3's, and runs the same command with
`--resume`: the log must say it resumed at step 3, and its steps 4-6 must repeat the first
run's losses (the trainer's exact resume).

Configs: on CUDA fsdp2.yaml, deepspeed_zero3.yaml (when `import deepspeed` works; the trainer
refuses ZeRO-3 until it gathers its checkpoints, so that row records the refusal) and
cpu_2proc.yaml's DDP (the same launch on the plain data-parallel path, a baseline when a sharded
one fails). On CPU only the DDP one: the trainer refuses FSDP and DeepSpeed without CUDA
(accelerate would quietly run DDP instead), so those are recorded as skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"fsdp2": "train/configs/fsdp2.yaml", "deepspeed_zero3": "train/configs/deepspeed_zero3.yaml",
           "ddp": "train/configs/cpu_2proc.yaml"}
STEPS, SAVE_EVERY = 6, 3
# Resumed steps repeat the first run's losses: exactly on CPU; on CUDA, bf16 autocast and
# atomics in backward may move them a little.
RESUME_TOL = 1e-2
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def write_model(directory: Path) -> Path:
    """The `tiny` preset fitted to the project tokenizer, as a checkpoint with processor files."""
    from train.model import copy_processor_files, preset_for_tokenizer
    from vlm import VLM
    from vlm.processor import ASSETS, Processor

    config = preset_for_tokenizer("tiny", Processor.from_pretrained().tokenizer)
    VLM.from_config(config, seed=0).save_pretrained(directory)
    copy_processor_files(ASSETS, directory)
    return directory


def write_data(directory: Path, n: int = 8) -> Path:
    """`n` conversations: a 56x56 square of one colour, "What colour is this?" -> "It is <colour>."."""
    from PIL import Image

    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name = list(COLOURS)[i % len(COLOURS)]
        Image.new("RGB", (56, 56), COLOURS[name]).save(directory / "images" / f"{i}.png")
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": [{"type": "image", "image": f"images/{i}.png"},
                                         {"type": "text", "text": "What colour is this?"}]},
            {"role": "assistant", "content": f"It is {name}."}]}))
    path = directory / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_process_config(source: Path, destination: Path) -> Path:
    """`source` with num_processes 1 and a free port (the machine may hold other runs)."""
    import yaml

    config = yaml.safe_load(source.read_text())
    config.update(num_processes=1, main_process_port=free_port())
    destination.write_text(yaml.safe_dump(config))
    return destination


def run(command: list[str], *, env: dict, timeout_s: float) -> tuple[int, str]:
    """(return code, stdout + stderr); 124 when the whole process group was killed at the timeout."""
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return 124, output + f"\n[killed after {timeout_s:.0f} s]"


def losses(output: Path) -> dict[int, float]:
    from train.metrics import metric_records

    path = output / "metrics.jsonl"
    return {r["step"]: r["loss"] for _, r in metric_records(path) if "loss" in r} if path.exists() else {}


def train_and_resume(config: Path, model: Path, data: Path, output: Path, *, env: dict, timeout_s: float) -> dict:
    """The first run, step 6's checkpoint deleted, the resumed run; what each left behind."""
    from train.checkpoint import all_steps, step_dir

    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "train", "sft",
               "--model", str(model), "--data", str(data), "--output", str(output), "--max-steps", str(STEPS),
               "--save-every", str(SAVE_EVERY), "--lr", "3e-3", "--batch-size", "4", "--max-length", "256",
               "--no-progress"]
    code, log = run(command, env=env, timeout_s=timeout_s)
    first = losses(output)
    record = {"returncode": code, "losses": [first[s] for s in sorted(first)],
              "checkpoint_steps": [step for step, _ in all_steps(output)]}
    if code != 0:
        return record | {"error": log[-3000:]}
    if step_dir(output, STEPS).is_dir():  # as if the run had died after step 3's checkpoint
        shutil.rmtree(step_dir(output, STEPS))
    code, log = run([*command, "--resume"], env=env, timeout_s=timeout_s)
    found = re.search(r"resumed from \S+ at step (\d+)", log)
    again = losses(output)
    record |= {"resume_returncode": code, "resumed_at": int(found.group(1)) if found else None,
               "resumed_steps": [s for s in sorted(again) if s > SAVE_EVERY],
               "resume_max_loss_diff": max((abs(again[s] - first[s]) for s in again if s > SAVE_EVERY and s in first),
                                           default=None)}
    return record | ({"error": log[-3000:]} if code != 0 else {})


def verdict(r: dict) -> dict:
    """Each check of one config's record, and whether all hold."""
    checks = {
        "runs_exit_0": r["returncode"] == 0 and r.get("resume_returncode") == 0,
        "loss_falls": len(r["losses"]) == STEPS and r["losses"][-1] < r["losses"][0],
        "checkpoint_saved": SAVE_EVERY in r["checkpoint_steps"] and STEPS in r["checkpoint_steps"],
        "resumed_at_saved_step": r.get("resumed_at") == SAVE_EVERY,
        "resumed_to_the_end": r.get("resumed_steps") == list(range(SAVE_EVERY + 1, STEPS + 1)),
        "resumed_losses_repeat": r.get("resume_max_loss_diff") is not None and r["resume_max_loss_diff"] <= RESUME_TOL,
    }
    return {"checks": checks, "pass": all(checks.values())}


def launch(device: str, *, quick: bool) -> dict:
    """{"configs": {name: record | {"skipped": why}}}: the first run's losses and checkpoints,
    the resumed run's start and losses, and the checks on them."""
    cuda = device.startswith("cuda")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if cuda and ":" in device:
        env["CUDA_VISIBLE_DEVICES"] = device.split(":")[1]
    if not cuda:
        env.setdefault("OMP_NUM_THREADS", "1")  # torch's default takes every core, and the launcher adds processes
    timeout_s = 240 if quick else 120  # a tiny model, 6 steps: ~30 s on a GPU, start-up included (estimate)
    record = {"steps": STEPS, "save_every": SAVE_EVERY, "resume_tol": RESUME_TOL, "timeout_s": timeout_s, "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, data = write_model(tmp / "model"), write_data(tmp / "data")
        for name, source in CONFIGS.items():
            if not cuda and name != "ddp":
                record["configs"][name] = {"config": source, "skipped": "needs CUDA: the trainer refuses sharded "
                                           "configs on CPU (accelerate would quietly run DDP)"}
                continue
            if name == "deepspeed_zero3" and (missing := deepspeed_missing()):
                record["configs"][name] = {"config": source, "skipped": missing}
                continue
            config = one_process_config(ROOT / source, tmp / f"{name}.yaml")
            result = train_and_resume(config, model, data, tmp / name, env=env, timeout_s=timeout_s)
            record["configs"][name] = {"config": f"{source} (num_processes 1)", **result, **verdict(result)}
    return record


def deepspeed_missing() -> str | None:
    try:
        import deepspeed  # noqa: F401
    except Exception as error:  # noqa: BLE001 (ImportError, or a build error of its CUDA ops)
        return "deepspeed not installed" if isinstance(error, ModuleNotFoundError) else f"deepspeed fails: {error}"
    return None


def table_rows(part: dict) -> list[str]:
    """Markdown table rows for `launch`'s record."""
    lines = []
    for name, r in part.get("configs", {}).items():
        if "skipped" in r:
            lines.append(f"| launch {name} | skipped ({r['config']}) | | | {r['skipped']} |")
            continue
        loss = " -> ".join(f"{x:.3f}" for x in r["losses"]) or "none logged"
        lines.append(f"| launch {name} | {r['config']}: loss over {part['steps']} steps | {loss} | | "
                     f"{'falls' if r['checks']['loss_falls'] else 'DOES NOT FALL'} |")
        diff = r.get("resume_max_loss_diff")
        lines.append(f"| launch {name} | checkpoints {r['checkpoint_steps']}; resumed at step {r.get('resumed_at')}, "
                     f"ran steps {r.get('resumed_steps')}, max loss diff vs the first run "
                     f"{'-' if diff is None else f'{diff:.1e}'} | | | "
                     f"{'pass' if r['pass'] else 'FAIL: ' + ', '.join(k for k, v in r['checks'].items() if not v)} |")
        if "error" in r:
            lines.append(f"| launch {name} | error (last line) | | | {r['error'].strip().splitlines()[-1][:200]} |")
    return lines

"""synth: the synthetic GUI/video data engine. Randomised multilingual web pages rendered by
Chromium, grounding / reading / question / agent-step / episode / video conversations with
their ground truth, the dataset writer (`python -m synth`), scoring and the held-out eval
(`python -m synth.eval`). It imports nothing from `train`."""

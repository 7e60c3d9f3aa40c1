#!/usr/bin/env bash
# One entry point that sets everything up on a machine that has only python3, then runs a job.
#   ./run.sh demo [ARGS]   the Gradio chat demo on the embedded default model
#   ./run.sh test [ARGS]   the whole test suite (pytest ARGS, e.g. -m "not browser")
#   ./run.sh setup         only the set-up
#   ./run.sh python ARGS   any command inside the environment, e.g. ./run.sh python -m vlm.inspect DIR
set -euo pipefail
cd "$(dirname "$0")"

SYSTEM_PACKAGES=(chromium xvfb xdotool x11-utils ffmpeg fonts-dejavu-core fonts-liberation fonts-noto-cjk)

system_setup() {
    local missing=()
    for pkg in "${SYSTEM_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    echo "run.sh: installing system packages: ${missing[*]}" >&2
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

pip_install() {  # pip, minus the mirror's "Location ... is ignored" warnings; keeps pip's exit code
    .venv/bin/pip install -q "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

python_setup() {
    local stamp=.venv/.installed want
    want=$(cat pyproject.toml | sha1sum | cut -d' ' -f1)
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return
    [ -x .venv/bin/python ] || python3 -m venv .venv
    echo "run.sh: installing Python packages into .venv" >&2
    # The torch/torchvision pair first and by exact version, so the resolver cannot pick
    # the CPU-only local torch wheel that PyPI's torchvision does not load with.
    pip_install "$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')" \
        "$(grep -o '"torchvision==[^"]*"' pyproject.toml | tr -d '"')"
    pip_install -e ".[dev]"
    .venv/bin/python -c "import torch, torchvision, vlm" # fail here, not in the first test
    echo "$want" > "$stamp"
}

job=${1:-}; [ $# -gt 0 ] && shift
case "$job" in
    setup) system_setup; python_setup ;;
    test)  system_setup; python_setup; exec .venv/bin/python -m pytest "$@" ;;
    demo)  system_setup; python_setup; exec .venv/bin/python -m demo "$@" ;;
    python) python_setup; exec .venv/bin/python "$@" ;;
    *) echo "usage: ./run.sh demo|test|setup|python [ARGS]" >&2; exit 2 ;;
esac

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
    echo "run.sh: apt-get update" >&2
    $sudo apt-get update -qq
    echo "run.sh: apt-get install (a few minutes for chromium and the CJK fonts)" >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

pip_install() {  # pip, minus the mirror's "Location ... is ignored" warnings; keeps pip's exit code
    .venv/bin/pip install -q "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

python_setup() {
    local stamp=.venv/.installed want
    want=$(cat pyproject.toml | sha1sum | cut -d' ' -f1)
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return
    local start=$SECONDS torch torchvision
    torch=$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
    torchvision=$(grep -o '"torchvision==[^"]*"' pyproject.toml | tr -d '"')
    # One line per stage: the pip installs take minutes and pip -q prints nothing meanwhile.
    if [ ! -x .venv/bin/python ]; then
        echo "run.sh: [1/4] creating the virtual environment .venv" >&2
        python3 -m venv .venv
    fi
    # The torch/torchvision pair first and by exact version, so the resolver cannot pick
    # the CPU-only local torch wheel that PyPI's torchvision does not load with.
    echo "run.sh: [2/4] installing $torch and $torchvision (the largest download; a few minutes)" >&2
    pip_install "$torch" "$torchvision"
    echo "run.sh: [3/4] installing the project and its dependencies (pyproject.toml, with [dev])" >&2
    pip_install -e ".[dev]"
    echo "run.sh: [4/4] checking that torch, torchvision and vlm import" >&2
    .venv/bin/python -c "import torch, torchvision, vlm" # fail here, not in the first test
    echo "$want" > "$stamp"
    echo "run.sh: Python set-up done in $((SECONDS - start)) s" >&2
}

job=${1:-}; [ $# -gt 0 ] && shift
case "$job" in
    setup) system_setup; python_setup ;;
    test)  system_setup; python_setup; exec .venv/bin/python -m pytest "$@" ;;
    demo)  system_setup; python_setup; exec .venv/bin/python -m demo "$@" ;;
    python) python_setup; exec .venv/bin/python "$@" ;;
    *) echo "usage: ./run.sh demo|test|setup|python [ARGS]" >&2; exit 2 ;;
esac

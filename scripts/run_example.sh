#!/usr/bin/env bash
# README command 1: set up the real ComfyUI host (cached in $P3S_HOST_DIR, default ~/.cache/p3s/host), then
# run example workflow 1 (two dogs, SD1.5) headless and write its images into outputs/.
# Arguments go to scripts/run_example.py: --out DIR, --models DIR (or $P3S_MODELS_DIR), --checkpoint NAME, ...
set -euo pipefail
cd "$(dirname "$0")/.."
HOST_DIR=${P3S_HOST_DIR:-$HOME/.cache/p3s/host}
bash scripts/setup_host.sh
exec "$HOST_DIR/venv/bin/python" scripts/run_example.py "$@"

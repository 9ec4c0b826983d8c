#!/usr/bin/env bash
# The README's test command: set up the real ComfyUI host, then run every suite in it.
# Treats "no tests collected" (pytest exit 5) as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST_DIR=${P3S_HOST_DIR:-$HOME/.cache/p3s/host}
bash scripts/setup_host.sh
bash scripts/setup_browser.sh
set +e
"$HOST_DIR/venv/bin/python" -m pytest -q "$@" tests
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "no tests collected: failing"; exit 1; fi
exit "$rc"

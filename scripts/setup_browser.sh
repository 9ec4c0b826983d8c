#!/usr/bin/env bash
# Installs what the browser tests (tests/test_browser.py) need, outside the clone. Idempotent: seconds when warm.
#  - Debian's `chromium` (apt-get; ~1 min and ~500 MB the first time), if no `chromium` is on PATH;
#  - `playwright-core` (npm) into $P3S_HOST_DIR/node (default ~/.cache/p3s/host/node);
#  - the newest ComfyUI frontend tested here (comfyui-frontend-package, pinned below; ~125 MB) with
#    `pip install --target` into $P3S_FRONTENDS_DIR/<version> (default ~/.cache/p3s/frontends), never into the
#    host venv: the suite serves it with ComfyUI's --front-end-root next to the host's own (pinned) frontend.
# Prints where they are. Set P3S_SKIP_BROWSER=1 to skip (the browser tests then skip themselves).
set -euo pipefail
HOST_DIR=${P3S_HOST_DIR:-$HOME/.cache/p3s/host}
NODE_DIR=$HOST_DIR/node
PW_VERSION=${P3S_PLAYWRIGHT_VERSION:-1.65.1}
# The newest comfyui-frontend-package on the index when the suite was last updated (tests/test_browser.py
# reads this line). To move it: `pip index versions comfyui-frontend-package`, change it, run the suite.
P3S_FRONTEND_NEWEST=${P3S_FRONTEND_NEWEST:-1.58.1}
FRONTENDS_DIR=${P3S_FRONTENDS_DIR:-$HOME/.cache/p3s/frontends}
log() { printf '[setup_browser] %s\n' "$*" >&2; }

if [ "${P3S_SKIP_BROWSER:-0}" = "1" ]; then log "skipped (P3S_SKIP_BROWSER=1)"; exit 0; fi

if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    log "installing Debian chromium with apt-get (about a minute)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  else
    log "no chromium and no apt-get: install Chromium yourself; the browser tests will skip"
  fi
fi

if ! command -v npm >/dev/null 2>&1; then
  log "no npm: install Node.js >= 18; the browser tests will skip"
elif [ ! -f "$NODE_DIR/node_modules/playwright-core/package.json" ]; then
  mkdir -p "$NODE_DIR"
  log "installing playwright-core@$PW_VERSION into $NODE_DIR"
  npm install --silent --no-audit --no-fund --prefix "$NODE_DIR" "playwright-core@$PW_VERSION" \
    || npm install --silent --no-audit --no-fund --prefix "$NODE_DIR" playwright-core
fi

FRONTEND_DIR=$FRONTENDS_DIR/$P3S_FRONTEND_NEWEST
if [ ! -f "$FRONTEND_DIR/comfyui_frontend_package/static/index.html" ]; then
  PIP="$HOST_DIR/venv/bin/python -m pip"
  [ -x "$HOST_DIR/venv/bin/python" ] || PIP="python3 -m pip"
  log "installing comfyui-frontend-package==$P3S_FRONTEND_NEWEST into $FRONTEND_DIR (--target: not the host venv)"
  rm -rf "$FRONTEND_DIR.tmp"
  $PIP install --quiet --disable-pip-version-check --no-deps --target "$FRONTEND_DIR.tmp" \
    "comfyui-frontend-package==$P3S_FRONTEND_NEWEST"
  rm -rf "$FRONTEND_DIR"
  mv "$FRONTEND_DIR.tmp" "$FRONTEND_DIR"
fi

log "chromium: $(command -v chromium || echo missing)"
log "newest frontend: $FRONTEND_DIR ($([ -f "$FRONTEND_DIR/comfyui_frontend_package/static/index.html" ] && echo ok || echo missing))"
log "playwright-core: $NODE_DIR/node_modules/playwright-core ($(node -p "require('$NODE_DIR/node_modules/playwright-core/package.json').version" 2>/dev/null || echo missing))"

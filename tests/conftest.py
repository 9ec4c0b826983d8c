"""Shared fixtures: the real ComfyUI host in-process and as a server, and tiny random models.

Core tests (tests/core) never touch these fixtures and never import comfy.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
import host as host_support  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "server: runs a real ComfyUI server on 127.0.0.1")
    config.addinivalue_line("markers", "browser: drives the UI in headless Chromium")


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> host_support.InProcessHost:
    """ComfyUI imported in-process (CPU), the pack loaded through ComfyUI's custom-node loader."""
    if not (host_support.COMFYUI_DIR / "main.py").is_file():
        pytest.fail(f"no ComfyUI at {host_support.COMFYUI_DIR}: run scripts/setup_host.sh or set COMFYUI_DIR")
    import torch
    torch.set_num_threads(2)
    h = host_support.InProcessHost(tmp_path_factory.mktemp("inproc"))
    h.tiny.make_checkpoint(str(h.base / "models" / "checkpoints" / "tiny_sd15.safetensors"))
    h.tiny.make_sdxl_checkpoint(str(h.base / "models" / "checkpoints" / "tiny_sdxl.safetensors"))
    h.tiny.make_clip_vision_file(str(h.base / "models" / "clip_vision" / "tiny_clip_vision.safetensors"))
    return h


@pytest.fixture(scope="session")
def server(tmp_path_factory, host):
    """A real ComfyUI server subprocess with the pack and tiny models; stopped at the end."""
    base = tmp_path_factory.mktemp("server")
    host_support.make_layout(base)  # the models folders, so the tiny files can be written before start
    host.tiny.make_checkpoint(str(base / "models" / "checkpoints" / "tiny_sd15.safetensors"))
    host.tiny.make_sdxl_checkpoint(str(base / "models" / "checkpoints" / "tiny_sdxl.safetensors"))
    host.tiny.make_clip_vision_file(str(base / "models" / "clip_vision" / "tiny_clip_vision.safetensors"))
    srv = host_support.Server(base)
    yield srv
    srv.stop()

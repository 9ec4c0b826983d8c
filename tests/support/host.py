"""The real ComfyUI host for the tests. It is shipped dev tooling (``p3s_host``: the demo and the benches
use it too); this module only gives the tests one short name for it."""
from __future__ import annotations

from p3s_host.comfy_env import InProcessHost
from p3s_host.server import (COMFYUI_DIR, HOST_DIR, PACK_NAME, REPO, TINY_REGISTRAR, ExecutionFailed, Server,
                             copy_into_input, make_layout)

__all__ = ["InProcessHost", "COMFYUI_DIR", "HOST_DIR", "PACK_NAME", "REPO", "TINY_REGISTRAR", "ExecutionFailed",
           "Server", "copy_into_input", "make_layout"]

"""Custom node that makes the tiny demo model families loadable (``p3s_host/tiny_models.py``).

Load it like any custom node (``make_layout`` links it into ``custom_nodes``; the trainer takes it as
``--custom-node p3s_host/tiny_registrar``): it registers the tiny SD1.5/SDXL families with ComfyUI's
model detection and the tiny CLIP vision files with CLIPVisionLoader. It adds no nodes.
"""
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)  # appended: ComfyUI's own top-level modules (nodes, utils, ...) keep priority
from p3s_host import tiny_models  # noqa: E402

tiny_models.register()
NODE_CLASS_MAPPINGS: dict = {}

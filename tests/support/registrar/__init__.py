"""Test-only custom node: registers the tiny model families inside a real ComfyUI server."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
import tiny_models  # noqa: E402

tiny_models.register()
NODE_CLASS_MAPPINGS = {}

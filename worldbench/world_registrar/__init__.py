"""A ComfyUI custom node (no nodes) that registers the world model family inside a server process:
link this folder into ``custom_nodes/`` next to the P3S pack to load the world checkpoint with
CheckpointLoaderSimple and the world CLIP vision with CLIPVisionLoader."""
import importlib.util
import os
import sys

_PKG = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
if "worldbench" not in sys.modules:
    # import the worldbench package by path (its parent is not on sys.path inside a ComfyUI server)
    _spec = importlib.util.spec_from_file_location("worldbench", os.path.join(_PKG, "__init__.py"),
                                                   submodule_search_locations=[_PKG])
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["worldbench"] = _mod
    _spec.loader.exec_module(_mod)
importlib.import_module("worldbench.family").register()

NODE_CLASS_MAPPINGS = {}

"""P3S: selective subject-driven generation for ComfyUI (P3S-Diffusion, arXiv 2412.19533).

ComfyUI entry point: ``comfy_entrypoint`` (the V3 extension: nodes, the models/p3s folder and the
selection-preview route, registered when ComfyUI loads it) and ``WEB_DIRECTORY`` (the Point Picker
widget). Importing this package registers nothing by itself. See docs/design.md.
"""
import importlib.util

WEB_DIRECTORY = "./web"

# Outside a ComfyUI process (pytest collecting the repo, packaging tools) there is no comfy_api.
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]

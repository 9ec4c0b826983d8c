"""P3S: selective subject-driven generation for ComfyUI (P3S-Diffusion, arXiv 2412.19533).

ComfyUI entry point: registers the models/p3s folder, the web widget and the V3 nodes.
"""
import importlib.util

WEB_DIRECTORY = "./web"

# Outside a ComfyUI process (pytest collecting the repo, packaging tools) there is nothing to register.
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint, register_model_folder

    register_model_folder()
    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]

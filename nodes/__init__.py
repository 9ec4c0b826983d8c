"""Thin ComfyUI layer (V3 schema). Everything comfy-specific lives in this package.

Importing it registers nothing: the ``models/p3s`` folder and the ``/p3s/select`` route are registered
when ComfyUI loads the extension (``P3SExtension.on_load``).
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .folders import register_model_folder
from .routes import register_routes


def node_list() -> list[type[io.ComfyNode]]:
    # Imported lazily so a broken optional module surfaces as one clear import error.
    from .registry import NODES
    return list(NODES)


class P3SExtension(ComfyExtension):
    async def on_load(self) -> None:
        """The pack's global resources: the adapter folder and the selection-preview route (idempotent)."""
        register_model_folder()
        register_routes()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_list()


async def comfy_entrypoint() -> P3SExtension:
    """What ComfyUI's loader calls. ComfyUI 0.3.75 defines ``on_load`` but never calls it, so it is
    called here, at load time, before ComfyUI asks for the node list (P3S Load Adapter's file list needs
    the folder); a ComfyUI that calls it itself finds it already done."""
    extension = P3SExtension()
    await extension.on_load()
    return extension


__all__ = ["comfy_entrypoint", "register_model_folder", "register_routes", "node_list", "P3SExtension"]

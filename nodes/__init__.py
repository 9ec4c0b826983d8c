"""Thin ComfyUI layer (V3 schema). Everything comfy-specific lives in this package."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .folders import register_model_folder


def node_list() -> list[type[io.ComfyNode]]:
    # Imported lazily so a broken optional module surfaces as one clear import error.
    from .registry import NODES
    return list(NODES)


class P3SExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_list()


async def comfy_entrypoint() -> P3SExtension:
    return P3SExtension()


__all__ = ["comfy_entrypoint", "register_model_folder", "node_list"]

from .routes import register_routes
register_routes()

"""ComfyUI in this process for worldbench (training, the quality gate, the probe): the pack's own dev
bootstrap (``p3s_host.comfy_env``) plus the world family's registration."""
from __future__ import annotations

from types import ModuleType


def setup(gpu: bool = False) -> None:
    """Import ComfyUI (CPU unless ``gpu`` and CUDA is there) and register the world model family."""
    import torch
    from p3s_host.comfy_env import import_comfy
    import_comfy(cpu=not (gpu and torch.cuda.is_available()))
    from . import family
    family.register()


def import_nodes() -> ModuleType:
    """ComfyUI's ``nodes`` module (the built-in node classes), after :func:`setup`."""
    from p3s_host.comfy_env import comfy_nodes
    return comfy_nodes()

"""What P3S needs to know about a MODEL: its family and its transformer blocks."""
from __future__ import annotations

import torch

import comfy.supported_models as sm

from ..p3s_core.injection import layer_key

SUPPORTED = "SD1.5 and SDXL U-Net checkpoints"


def model_family(model) -> str:
    """'sd15' or 'sdxl'; any other family gets a clear error naming what is supported."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    if isinstance(config, sm.SDXL):
        return "sdxl"
    if isinstance(config, sm.SD15):
        return "sd15"
    name = type(config).__name__ if config is not None else type(model).__name__
    raise ValueError(f"P3S: model: the MODEL is {name}, which P3S does not support. P3S works with "
                     f"{SUPPORTED} (and fine-tunes of them); load one of those with Load Checkpoint.")


def transformer_blocks(model) -> list[tuple[str, torch.nn.Module]]:
    """('input.1.0', BasicTransformerBlock) for every transformer block of the U-Net, in forward order.

    The keys are the ones P3S's attention patches see (``injection.layer_key`` of ComfyUI's block tuple
    and block_index), so adapters, the bank and the trainer's attention recorders agree on them.
    """
    unet = model.model.diffusion_model
    out: list[tuple[str, torch.nn.Module]] = []
    groups = (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks))
    for name, blocks in groups:
        for i, block in enumerate(blocks):
            for module in block:
                for j, tb in enumerate(getattr(module, "transformer_blocks", None) or []):
                    out.append((layer_key((name, i), j), tb))
    return out


def transformer_layers(model) -> list[tuple[str, int]]:
    """('input.1.0', width) for every transformer block of the U-Net, in forward order."""
    return [(key, int(tb.norm1.normalized_shape[0])) for key, tb in transformer_blocks(model)]


def context_dim(model) -> int:
    return int(model.model.model_config.unet_config["context_dim"])


def native_side(family: str) -> int:
    """Long side (pixels) the reference is brought down to: the family's training resolution."""
    return 1024 if family == "sdxl" else 768

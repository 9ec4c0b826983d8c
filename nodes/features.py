"""Patch features for the RNGR selection: CLIP-vision patch tokens, or the built-in weight-free ones."""
from __future__ import annotations

import torch

from ..p3s_core.features import clip_patch_grid


@torch.no_grad()
def clip_features(clip_vision, image: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] IMAGE -> [B, g, g, D] patch grid from CLIP vision penultimate hidden states.

    crop=False squashes the whole image to the encoder's square input, so the grid covers the full
    reference (a centre crop would cut off subjects near the edges).
    """
    out = clip_vision.encode_image(image[..., :3], crop=False)
    hidden = out["penultimate_hidden_states"]
    return torch.stack([clip_patch_grid(hidden[i:i + 1]) for i in range(hidden.shape[0])])


@torch.no_grad()
def clip_token_width(clip_vision) -> int:
    """Hidden width of a CLIP vision model's tokens (1024 for ViT-L, 1280 for ViT-H)."""
    probe = torch.zeros(1, 224, 224, 3)
    return int(clip_vision.encode_image(probe, crop=False)["penultimate_hidden_states"].shape[-1])

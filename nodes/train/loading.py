"""The frozen models of a training run, loaded through ComfyUI's own loaders (every checkpoint it loads works)."""
from __future__ import annotations

from pathlib import Path

import torch

import comfy.clip_vision
import comfy.model_management as mm
import comfy.sd
import folder_paths

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_model_path(name: str, folder: str) -> str:
    """``name`` as a path, else as a file in one of ComfyUI's ``folder`` model folders."""
    if Path(name).is_file():
        return str(Path(name))
    full = folder_paths.get_full_path(folder, name)
    if full is None:
        raise ValueError(f"P3S: {name!r} is neither a file nor a model in {folder}: searched "
                         f"{', '.join(folder_paths.get_folder_paths(folder))}")
    return full


def load_models(checkpoint: str, clip_vision: str, precision: str = "fp32"):
    """(ModelPatcher, CLIP, VAE, CLIPVisionModel); the U-Net in ``precision`` on a GPU, fp32 on the CPU."""
    opts = {"dtype": DTYPES[precision]} if mm.get_torch_device().type == "cuda" else {}
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(resolve_model_path(checkpoint, "checkpoints"),
                                                             model_options=opts)[:3]
    if model is None or clip is None or vae is None:
        raise ValueError(f"P3S: --checkpoint {checkpoint} must be a full checkpoint (U-Net + CLIP + VAE)")
    cv = comfy.clip_vision.load(resolve_model_path(clip_vision, "clip_vision"))
    return model, clip, vae, cv

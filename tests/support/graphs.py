"""Pieces several test modules share: the head of an API prompt (checkpoint, prompts, latent, reference,
Point Picker) and the in-process equivalent (checkpoint loaded, prompts encoded)."""
from __future__ import annotations

import torch


def prompt_head(ckpt: str, reference: str, points: str, side: int, text: str = "a dog on the beach") -> dict:
    """Nodes ``ckpt``, ``pos``, ``neg``, ``empty``, ``ref`` and ``pick`` of an API prompt."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": side, "height": side, "batch_size": 1}},
        "ref": {"class_type": "LoadImage", "inputs": {"image": reference}},
        "pick": {"class_type": "P3SPointPicker", "inputs": {"image": ["ref", 0], "points": points}},
    }


def load_encoded(nodes, ckpt: str, text: str) -> tuple:
    """(model, clip, vae, positive, negative) through the host's own CheckpointLoaderSimple and CLIPTextEncode."""
    with torch.inference_mode():
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[:3]
        pos = nodes.CLIPTextEncode().encode(clip, text)[0]
        neg = nodes.CLIPTextEncode().encode(clip, "")[0]
    return model, clip, vae, pos, neg

"""Pieces several test modules share: the head of an API prompt (checkpoint, prompts, latent, reference,
Point Picker) and the in-process equivalent (checkpoint loaded, prompts encoded)."""
from __future__ import annotations

from types import SimpleNamespace

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


def injection_env(host, copies: int = 1) -> SimpleNamespace:
    """The injection tests' shared setup: ``copies`` separate loads of the tiny SD1.5 checkpoint
    (``.copies``: [(model, vae)]; ``.model/.clip/.vae``: the first), a prompt pair, the two-subject scene and
    the pack's P3S Apply / P3S Sampler nodes and patch module."""
    import scenes
    N = host.nodes
    e = SimpleNamespace(host=host, N=N, copies=[])
    with torch.inference_mode():
        for _ in range(copies):  # separate loads: independent MODELs with the same weights
            model, clip, vae = N.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
            e.copies.append((model, vae))
        e.model, e.vae = e.copies[0]
        e.clip = clip
        e.pos = N.CLIPTextEncode().encode(clip, "a photo of a dog on a beach")[0]
        e.neg = N.CLIPTextEncode().encode(clip, "blurry")[0]
    e.image, e.masks, e.centers = scenes.two_subjects(64, 64, seed=2)
    e.Apply = N.NODE_CLASS_MAPPINGS["P3SApply"]
    e.Sampler = N.NODE_CLASS_MAPPINGS["P3SSampler"]
    e.patch_mod = host.pack("nodes.patch")
    return e

"""The world model family inside ComfyUI: an SD1.5-architecture U-Net, a small CLIP text model with the
real SD1 tokenizer, a TAESD-format VAE and a small CLIP vision model, loadable by the stock loaders.

``register()`` makes ComfyUI recognise them (the registrar custom node calls it inside a server):
- ``WorldSD15`` is inserted into ``comfy.supported_models.models``: a subclass of ComfyUI's SD15 (same
  U-Net code, eps prediction, SD1.5 noise schedule), detected by its 128-wide text context. Its latent
  format has scale 1 (the TAESD's own ``vae_scale``/``vae_shift`` normalise the latent) and its CLIP
  target is the small text model below with ComfyUI's SD1 tokenizer.
- ``CLIPVisionLoader`` learns the world CLIP vision file (marked by a key of its own).

Needs ComfyUI on ``sys.path`` (see :mod:`worldbench.comfy_env`).
"""
from __future__ import annotations

import json
import os
import tempfile

import torch

import comfy.clip_vision
import comfy.latent_formats
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base

CONTEXT_DIM = 128
TEXT_CONFIG = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 49407, "hidden_act": "quick_gelu", "hidden_size": CONTEXT_DIM, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 4 * CONTEXT_DIM, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 4,
    "num_hidden_layers": 2, "pad_token_id": 1, "projection_dim": CONTEXT_DIM, "torch_dtype": "float32",
    "vocab_size": 49408,
}
VISION_MARKER = "p3s_world_clip_vision"
VISION_CONFIG = {
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 64, "image_size": 64,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 128, "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model", "num_attention_heads": 4, "num_channels": 3, "num_hidden_layers": 3,
    "patch_size": 4, "projection_dim": 64, "torch_dtype": "float32",
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
}
VISION_JSON = os.path.join(tempfile.gettempdir(), "p3s_world_clip_vision.json")


class WorldLatent(comfy.latent_formats.LatentFormat):
    """4 channels, scale 1: the world TAESD's vae_scale/vae_shift already give unit-variance latents."""
    scale_factor = 1.0
    latent_channels = 4


class WorldClipModel(comfy.sd1_clip.SD1ClipModel):
    """SD1-style text encoder (last hidden state, final layer norm) of width CONTEXT_DIM."""

    def __init__(self, device="cpu", dtype=None, model_options=None, **kw):
        kw.pop("clip_model", None)
        kw.pop("textmodel_json_config", None)
        super().__init__(device=device, dtype=dtype, model_options=model_options or {},
                         clip_model=comfy.sd1_clip.SDClipModel, textmodel_json_config=dict(TEXT_CONFIG), **kw)


class WorldSD15(comfy.supported_models.SD15):
    unet_config = {"context_dim": CONTEXT_DIM, "use_linear_in_transformer": False, "adm_in_channels": None,
                   "use_temporal_attention": False}
    unet_extra_config = {"num_heads": 4, "num_head_channels": -1}
    latent_format = WorldLatent

    def clip_target(self, state_dict=None):
        return comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, WorldClipModel)


def _vision_json() -> str:
    if not os.path.isfile(VISION_JSON) or json.load(open(VISION_JSON)) != VISION_CONFIG:
        tmp = VISION_JSON + f".{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(VISION_CONFIG, f)
        os.replace(tmp, VISION_JSON)
    return VISION_JSON


def vision_model() -> comfy.clip_vision.ClipVisionModel:
    return comfy.clip_vision.ClipVisionModel(_vision_json())


def _wrap_clip_vision_loader(orig):
    def load(sd, prefix="", convert_keys=False):
        if VISION_MARKER in sd:
            clip = vision_model()
            clip.load_sd({k: v for k, v in sd.items() if k != VISION_MARKER})
            return clip
        return orig(sd, prefix, convert_keys)
    load.p3s_world = True
    return load


def register() -> None:
    """Make the world family loadable by CheckpointLoaderSimple / UNETLoader / CLIPLoader / VAELoader and
    the world CLIP vision by CLIPVisionLoader (idempotent)."""
    if WorldSD15 not in comfy.supported_models.models:
        comfy.supported_models.models.insert(0, WorldSD15)
    if not getattr(comfy.clip_vision.load_clipvision_from_sd, "p3s_world", False):
        comfy.clip_vision.load_clipvision_from_sd = _wrap_clip_vision_loader(comfy.clip_vision.load_clipvision_from_sd)


def random_state(shapes: dict, generator: torch.Generator, std: float | None = None) -> dict:
    """Seeded random weights of the given shapes: norms 1, biases 0, matrices N(0, 1/fan_in) (or ``std``)."""
    out = {}
    for k, s in shapes.items():
        s = torch.Size(s)
        if k.endswith("position_ids"):
            continue
        if len(s) <= 1:
            out[k] = torch.ones(s) if k.endswith(("weight", "logit_scale")) else torch.zeros(s)
        else:
            out[k] = torch.randn(s, generator=generator) * (std if std is not None else s[1:].numel() ** -0.5)
    return out


def text_encoder_state(seed: int) -> dict:
    """Frozen random weights of the world text encoder, in checkpoint layout (``cond_stage_model.*``)."""
    with torch.no_grad():
        clip = WorldClipModel()
    g = torch.Generator().manual_seed(seed)
    sd = random_state({k: v.shape for k, v in clip.state_dict().items()}, g)
    return {"cond_stage_model." + k[len("clip_l."):]: v for k, v in sd.items()}


def vision_state(seed: int) -> dict:
    """Frozen random weights of the world CLIP vision model, with its marker key."""
    model = vision_model()
    g = torch.Generator().manual_seed(seed)
    sd = random_state({k: v.shape for k, v in model.get_sd().items()}, g)
    sd[VISION_MARKER] = torch.zeros(1)
    return sd

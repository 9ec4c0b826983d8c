"""Tiny random-weight models for the demo, the benches and the tests (no download, seconds to write).

They go through the same ComfyUI loading code users run: a tiny SD1.5-shaped family registered in
``comfy.supported_models`` so a 13 MB checkpoint loads through CheckpointLoaderSimple, a tiny
SDXL-shaped U-Net built with ComfyUI's own classes, and a tiny CLIP vision model (257 tokens, a
16x16 patch grid like ViT-L/H at 224 px).
"""
from __future__ import annotations

import json
import os
import tempfile

import torch

import comfy.clip_vision
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd

_TMP = tempfile.gettempdir()
TINY_CLIP_JSON = os.path.join(_TMP, "p3s_tiny_clip_text_config.json")
TINY_CLIP_VISION_JSON = os.path.join(_TMP, "p3s_tiny_clip_vision_config.json")
TINY_CLIP_L32_JSON = os.path.join(_TMP, "p3s_tiny_clip_l32_config.json")
TINY_CLIP_G32_JSON = os.path.join(_TMP, "p3s_tiny_clip_g32_config.json")
# Marker key that lets the tiny registrar recognise a tiny CLIP vision file in CLIPVisionLoader.
TINY_CLIP_VISION_MARKER = "p3s_tiny_clip_vision_marker"
CLIP_VISION_WIDTH = 64


def _write_configs() -> None:
    cfg = json.load(open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")))
    cfg.update(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2, projection_dim=64)
    json.dump(cfg, open(TINY_CLIP_JSON, "w"))
    vcfg = json.load(open(os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_vitl.json")))
    vcfg.update(hidden_size=CLIP_VISION_WIDTH, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
                projection_dim=32)
    json.dump(vcfg, open(TINY_CLIP_VISION_JSON, "w"))
    # SDXL text encoders: CLIP-L and CLIP-G halves of 32 each -> a 64-wide context; G's pooled output (its width, 32)
    # is the pooled vector, so the ADM input is 32 + 6 * 256 like TinySDXL expects.
    lcfg = dict(cfg, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3, projection_dim=32)
    json.dump(lcfg, open(TINY_CLIP_L32_JSON, "w"))
    gcfg = json.load(open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "clip_config_bigg.json")))
    gcfg.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3, projection_dim=64)
    json.dump(gcfg, open(TINY_CLIP_G32_JSON, "w"))


_write_configs()

TINY_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
             "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
             "channel_mult": [1, 2], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
             "context_dim": 64, "use_temporal_resblock": False, "use_temporal_attention": False}

# SDXL-shaped: linear projections in the transformers, an ADM (pooled text + size) input, several
# transformer blocks per SpatialTransformer, no attention at the highest resolution.
TINY_SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                  "legacy": False, "num_classes": "sequential", "adm_in_channels": 32 + 6 * 256, "in_channels": 4,
                  "model_channels": 32, "num_res_blocks": [1, 1, 1], "transformer_depth": [0, 1, 2],
                  "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2], "channel_mult": [1, 1, 2],
                  "transformer_depth_middle": 2, "use_linear_in_transformer": True, "context_dim": 64,
                  "num_head_channels": 16, "use_temporal_resblock": False, "use_temporal_attention": False}


class TinyClipModel(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, **kw):
        kw.pop("clip_model", None)
        super().__init__(device=device, dtype=dtype, clip_model=comfy.sd1_clip.SDClipModel,
                         textmodel_json_config=TINY_CLIP_JSON, **kw)


class TinySD15(comfy.supported_models.SD15):
    unet_config = {"context_dim": 64, "model_channels": 32, "use_linear_in_transformer": False,
                   "adm_in_channels": None, "use_temporal_attention": False}
    unet_extra_config = {"num_heads": 4, "num_head_channels": -1}

    def clip_target(self, *a, **k):
        return comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, TinyClipModel)


class _TinyClipG(comfy.sdxl_clip.SDXLClipG):
    def __init__(self, device="cpu", dtype=None, model_options=None):
        model_options = model_options or {}
        comfy.sd1_clip.SDClipModel.__init__(
            self, device=device, layer="hidden", layer_idx=-2, textmodel_json_config=TINY_CLIP_G32_JSON,
            dtype=dtype, special_tokens={"start": 49406, "end": 49407, "pad": 0}, layer_norm_hidden_state=False,
            return_projected_pooled=True, model_options={**model_options, "model_name": "clip_g"})


class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
    def __init__(self, device="cpu", dtype=None, model_options=None):
        model_options = model_options or {}
        torch.nn.Module.__init__(self)
        self.clip_l = comfy.sd1_clip.SDClipModel(layer="hidden", layer_idx=-2, device=device, dtype=dtype,
                                                 layer_norm_hidden_state=False, textmodel_json_config=TINY_CLIP_L32_JSON,
                                                 model_options=model_options)
        self.clip_g = _TinyClipG(device=device, dtype=dtype, model_options=model_options)
        self.dtypes = {dtype}


class TinySDXL(comfy.supported_models.SDXL):
    unet_config = {"context_dim": 64, "model_channels": 32, "use_linear_in_transformer": True,
                   "adm_in_channels": 32 + 6 * 256, "use_temporal_attention": False}
    unet_extra_config = {"num_head_channels": 16}

    def clip_target(self, state_dict=None):
        return comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, TinySDXLClipModel)


def _tiny_clip_vision_load(orig):
    def load(sd, prefix="", convert_keys=False):
        if TINY_CLIP_VISION_MARKER in sd:
            sd = {k: v for k, v in sd.items() if k != TINY_CLIP_VISION_MARKER}
            clip = comfy.clip_vision.ClipVisionModel(TINY_CLIP_VISION_JSON)
            clip.load_sd(sd)
            return clip
        return orig(sd, prefix, convert_keys)
    load._p3s_tiny = True
    return load


def register() -> None:
    """Make the tiny families loadable through ComfyUI's own loaders (what tiny_registrar/ does)."""
    for cls in (TinySDXL, TinySD15):
        if cls not in comfy.supported_models.models:
            comfy.supported_models.models.insert(0, cls)
    if not getattr(comfy.clip_vision.load_clipvision_from_sd, "_p3s_tiny", False):
        comfy.clip_vision.load_clipvision_from_sd = _tiny_clip_vision_load(comfy.clip_vision.load_clipvision_from_sd)


def _rand(shapes: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        s = torch.Size(s)
        if len(s) <= 1:  # norms start at 1, biases at 0
            out[k] = torch.ones(s) if k.endswith(("weight", "vae_scale")) else torch.zeros(s)
        else:
            out[k] = torch.randn(s, generator=g) / (s[1:].numel() ** 0.5)
    return out


def _unet_state(cfg: dict, extra: dict, seed: int) -> dict:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    with torch.device("meta"):
        unet = UNetModel(**dict(cfg, **extra), operations=comfy.ops.disable_weight_init)
    return _rand({k: v.shape for k, v in unet.state_dict().items()}, seed)


def make_checkpoint(path: str, seed: int = 0, dtype=torch.float16) -> str:
    """Write a tiny SD1.5-family checkpoint (U-Net + CLIP-L text + TAESD VAE) loadable by CheckpointLoaderSimple."""
    from safetensors.torch import save_file
    sd = {"model.diffusion_model." + k: v for k, v in _unet_state(TINY_UNET, TinySD15.unet_extra_config, seed).items()}
    taesd = _rand({k: v.shape for k, v in comfy.taesd.taesd.TAESD().state_dict().items()}, seed + 1)
    sd.update({"first_stage_model." + k: v for k, v in taesd.items()})
    with torch.no_grad():
        clip = TinyClipModel()
    for k, v in _rand({k: v.shape for k, v in clip.state_dict().items()}, seed + 2).items():
        if not k.endswith("position_ids"):
            sd["cond_stage_model." + k[len("clip_l."):]] = v
    save_file({k: v.contiguous().to(dtype) for k, v in sd.items()}, path)
    return path


def make_clip_vision_file(path: str, seed: int = 5) -> str:
    """Write a tiny CLIP vision file that CLIPVisionLoader detects once register() ran."""
    from safetensors.torch import save_file
    model = comfy.clip_vision.ClipVisionModel(TINY_CLIP_VISION_JSON)
    sd = _rand({k: v.shape for k, v in model.get_sd().items()}, seed)
    sd[TINY_CLIP_VISION_MARKER] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def make_clip_vision(seed: int = 5):
    model = comfy.clip_vision.ClipVisionModel(TINY_CLIP_VISION_JSON)
    model.load_sd(_rand({k: v.shape for k, v in model.get_sd().items()}, seed))
    return model


def _patcher(model_config, unet_cfg: dict, seed: int):
    model = comfy.model_base.BaseModel(model_config, device="cpu") if not isinstance(model_config, TinySDXL) \
        else comfy.model_base.SDXL(model_config, device="cpu")
    sd = _unet_state(unet_cfg, model_config.unet_extra_config, seed)
    model.diffusion_model.load_state_dict(sd, strict=True)
    model.diffusion_model.float()
    dev = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=dev)


def make_sd15_patcher(seed: int = 0):
    """A tiny SD1.5-shaped ModelPatcher built directly (no file), fp32."""
    cfg = TinySD15(dict(TINY_UNET))
    cfg.set_inference_dtype(torch.float32, torch.float32)
    return _patcher(cfg, TINY_UNET, seed)


def make_sdxl_patcher(seed: int = 0):
    """A tiny SDXL-shaped ModelPatcher (linear transformers, ADM input, depth-2 blocks), fp32."""
    unet = {k: v for k, v in TINY_SDXL_UNET.items()}
    cfg = TinySDXL(unet)
    cfg.set_inference_dtype(torch.float32, torch.float32)
    return _patcher(cfg, TINY_SDXL_UNET, seed)


def text_cond(batch: int = 1, tokens: int = 77, seed: int = 1, pooled: bool = False) -> list:
    """A CONDITIONING list with random context (dim 64), for patcher-level tests without CLIP."""
    g = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(batch, 32, generator=g)} if pooled else {}
    return [[torch.randn(batch, tokens, 64, generator=g), extra]]


def make_unsupported_patcher(seed: int = 0):
    """A tiny SD2.x-family U-Net: a real ComfyUI family that P3S does not support."""
    class TinySD20(comfy.supported_models.SD20):
        unet_extra_config = {"num_heads": 4, "num_head_channels": -1}
    cfg = TinySD20(dict(TINY_UNET))
    cfg.set_inference_dtype(torch.float32, torch.float32)
    return _patcher(cfg, TINY_UNET, seed)


def make_sdxl_checkpoint(path: str, seed: int = 10, dtype=torch.float16) -> str:
    """A tiny SDXL-family checkpoint (U-Net, CLIP-L + CLIP-G text encoders, TAESD VAE) in the real
    SDXL checkpoint layout (written with ComfyUI's own state_dict_for_saving), for CheckpointLoaderSimple."""
    from safetensors.torch import save_file
    cfg = TinySDXL(dict(TINY_SDXL_UNET))
    model = comfy.model_base.SDXL(cfg, device="cpu")
    model.diffusion_model.load_state_dict(_unet_state(TINY_SDXL_UNET, TinySDXL.unet_extra_config, seed))
    with torch.no_grad():
        clip = TinySDXLClipModel()
    clip_sd = {k: v for k, v in _rand({k: v.shape for k, v in clip.state_dict().items()}, seed + 1).items()
               if not k.endswith("position_ids")}
    vae_sd = _rand({k: v.shape for k, v in comfy.taesd.taesd.TAESD().state_dict().items()}, seed + 2)
    sd = model.state_dict_for_saving(clip_sd, vae_sd, None)
    save_file({k: v.contiguous().to(dtype) for k, v in sd.items() if torch.is_tensor(v)}, path)
    return path

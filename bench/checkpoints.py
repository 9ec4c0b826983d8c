"""Random-weight checkpoints with the real SD1.5 / SDXL U-Net and text-encoder shapes, for the benches.

Written once through ComfyUI's own classes (shapes from modules built on the meta device, keys from the
model config's ``state_dict_for_saving``), so CheckpointLoaderSimple detects and loads them like the real
files. Cached under ``~/.cache/p3s/bench/checkpoints`` (never committed). The VAE is TAESD's (what ComfyUI
loads when a checkpoint carries ``taesd_*`` keys): the benches time the sampler only, and a full-size VAE
would only add untimed minutes per run on a CPU. Weights are drawn with std 1/sqrt(fan_in) so
activations stay in range (denormals or overflow would distort CPU timings).

    python bench/checkpoints.py [--family sd15|sdxl]     # prints the path (writes it when missing)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # p3s_host; appended so ComfyUI's own top-level modules keep priority
from p3s_host import comfy_env  # noqa: E402

CACHE = Path.home() / ".cache" / "p3s" / "bench"
CHECKPOINTS = CACHE / "checkpoints"

# The U-Net configs comfy/model_detection.py derives from the real SD1.5 and SDXL base checkpoints.
SD15_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
             "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             "use_temporal_attention": False, "use_temporal_resblock": False}
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False}
FILES = {"sd15": "p3s_bench_sd15_random.safetensors", "sdxl": "p3s_bench_sdxl_random.safetensors"}


def _shapes(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _random(shapes: dict, seed: int, dtype):
    """Random tensors, one at a time (the whole SDXL state would not fit twice in memory)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    for k, s in shapes.items():
        s = torch.Size(s)
        if len(s) <= 1:  # norms start at 1, biases at 0
            yield k, (torch.ones(s) if k.endswith(("weight", "vae_scale")) else torch.zeros(s)).to(dtype)
        else:
            yield k, (torch.randn(s, generator=g) / (s[1:].numel() ** 0.5)).to(dtype)


def _state_shapes(family: str) -> dict:
    """{key in the checkpoint file: shape}: U-Net, text encoder(s) and TAESD, named as real files name them."""
    import torch
    import comfy.model_base
    import comfy.ops
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models
    import comfy.taesd.taesd
    unet = dict(SD15_UNET if family == "sd15" else SDXL_UNET)
    config = (comfy.supported_models.SD15 if family == "sd15" else comfy.supported_models.SDXL)(unet)
    with torch.device("meta"):
        model = (comfy.model_base.BaseModel if family == "sd15" else comfy.model_base.SDXL)(config, device="meta")
        clip = (comfy.sd1_clip.SD1ClipModel if family == "sd15" else comfy.sdxl_clip.SDXLClipModel)(device="meta")
        taesd = comfy.taesd.taesd.TAESD()
    clip_sd = {k: v for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
    sd = model.state_dict_for_saving(clip_sd, None, None)
    shapes = {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}
    shapes.update({"first_stage_model." + k: s for k, s in _shapes(taesd).items()})
    return shapes


def checkpoint(family: str = "sd15", seed: int = 0) -> Path:
    """The cached checkpoint of ``family`` (written when missing; fp16 like the public files)."""
    import torch
    from safetensors.torch import save_file
    path = CHECKPOINTS / FILES[family]
    if path.is_file():
        return path
    comfy_env.import_comfy(cpu=True)
    CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sd = dict(_random(_state_shapes(family), seed, torch.float16))
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
    tmp.rename(path)
    print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB, {sum(v.numel() for v in sd.values()) / 1e6:.0f}M "
          f"params) in {time.time() - t0:.0f}s")
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=tuple(FILES), default="sd15")
    print(checkpoint(ap.parse_args().family))

"""The world U-Net: ComfyUI's SD1.5 ``UNetModel`` (through ``WorldSD15``), trained with eps prediction on
the SD1.5 noise schedule (ComfyUI's own ``model_sampling``), so KSampler samples it like any SD1.5 model.

Training: latents of rendered images (the world TAESD), the caption's context from the frozen world
text encoder (computed by ComfyUI's CLIP object, the same code CLIPTextEncode runs), caption dropout to
the empty prompt for classifier-free guidance, an EMA of the weights (what is saved).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn as nn

from .progress import progress

log = logging.getLogger("P3S")


def unet_config(cfg) -> dict:
    """ComfyUI unet_config of the world U-Net (what ComfyUI's detection derives back from the weights)."""
    levels = len(cfg.channel_mult)
    nrb = cfg.num_res_blocks
    return {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": cfg.model_channels,
            "num_res_blocks": [nrb] * levels, "transformer_depth": [1] * (nrb * levels),
            "transformer_depth_output": [1] * ((nrb + 1) * levels), "channel_mult": list(cfg.channel_mult),
            "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 128,
            "use_temporal_resblock": False, "use_temporal_attention": False}


def build(cfg, seed: int):
    """A BaseModel of the WorldSD15 family (diffusion_model + model_sampling), freshly initialised."""
    import comfy.model_base
    from .family import WorldSD15
    mc = WorldSD15(unet_config(cfg))
    mc.set_inference_dtype(torch.float32, torch.float32)
    torch.manual_seed(seed)
    model = comfy.model_base.BaseModel(mc, device="cpu")
    unet = model.diffusion_model
    for name, m in unet.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d)):
            _reset(m)
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    # zero-init the residual branches' last layers and the output (the usual diffusion U-Net init)
    for name, m in unet.named_modules():
        if name.endswith(("out_layers.3", "proj_out")) or name == "out.2":
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    model.diffusion_model.float()
    return model


def _reset(m: nn.Module) -> None:
    for base in (nn.Conv2d, nn.Conv1d, nn.Linear):
        if isinstance(m, base):
            base.reset_parameters(m)
            return


class EMA:
    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def train(model, latents: torch.Tensor, caption_ids: torch.Tensor, contexts: torch.Tensor, empty: torch.Tensor,
          cfg, seed: int, resume: Path | None = None, save_every: int = 500, desc: str = "unet"):
    """Trains ``model.diffusion_model`` in place; returns (EMA state dict, loss history).

    latents [N, 4, h, w] (normalised); caption_ids [N] index into contexts [C, 77, 128]; empty [77, 128].
    ``resume``: a file that keeps (and restores) the run's state every ``save_every`` steps.
    """
    unet = model.diffusion_model
    unet.train()
    ms = model.model_sampling
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.01)
    warm = min(500, cfg.steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))))
    ema = EMA(unet, cfg.ema)
    g = torch.Generator().manual_seed(seed)
    history: list[float] = []
    start = 0
    if resume is not None and resume.is_file():
        st = torch.load(resume, weights_only=False)
        unet.load_state_dict(st["unet"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        ema.shadow = st["ema"]
        g.set_state(st["rng"])
        history, start = st["history"], st["step"]
        log.info("worldbench: resuming the U-Net at step %d", start)
    n = latents.shape[0]
    sigmas = ms.sigmas.float()
    bar = progress(range(start, cfg.steps), desc=desc, total=cfg.steps - start)
    for step in bar:
        idx = torch.randint(0, n, (cfg.batch,), generator=g)
        x0 = latents[idx]
        ctx = contexts[caption_ids[idx]]
        drop = torch.rand(cfg.batch, generator=g) < cfg.caption_dropout
        ctx = torch.where(drop[:, None, None], empty[None], ctx)
        t = torch.randint(0, sigmas.shape[0], (cfg.batch,), generator=g)
        sigma = sigmas[t]
        eps = torch.randn(x0.shape, generator=g)
        x_in = (x0 + sigma[:, None, None, None] * eps) / (sigma[:, None, None, None] ** 2 + 1).sqrt()
        pred = unet(x_in, t.float(), context=ctx)
        loss = (pred - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(unet, step)
        history.append(float(loss))
        if step % 25 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{sum(history[-200:]) / len(history[-200:]):.4f}")
        if resume is not None and save_every and (step + 1) % save_every == 0 and step + 1 < cfg.steps:
            tmp = resume.with_suffix(".tmp")
            torch.save({"unet": unet.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "ema": ema.shadow, "rng": g.get_state(), "history": history, "step": step + 1}, tmp)
            tmp.replace(resume)
    unet.eval()
    return {k: v.clone() for k, v in ema.shadow.items()}, history


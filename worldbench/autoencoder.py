"""The world VAE: ComfyUI's TAESD architecture (8x down, 4 latent channels) trained on world renders.

Saved with ``taesd_encoder.*`` / ``taesd_decoder.*`` / ``vae_scale`` / ``vae_shift`` keys, so ComfyUI's
VAE loader (and a checkpoint's ``first_stage_model.*``) loads it as a TAESD. ``vae_scale``/``vae_shift``
are set after training so that encoded latents have zero mean and unit variance (the U-Net's latent
format then has scale 1).

The autoencoder is fully convolutional, so most steps train on small random crops aligned to the
8-pixel latent grid (a fraction of the whole-image cost), then a few on whole images.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .progress import progress

log = logging.getLogger("P3S")


def build():
    """A freshly initialised TAESD (ComfyUI's class; its layers skip init, so we initialise them)."""
    import comfy.taesd.taesd
    ae = comfy.taesd.taesd.TAESD(latent_channels=4)
    for m in ae.modules():
        if isinstance(m, nn.Conv2d):
            nn.Conv2d.reset_parameters(m)
    return ae


def encode_raw(ae, x01: torch.Tensor) -> torch.Tensor:
    return ae.taesd_encoder(x01)


def decode_raw(ae, z: torch.Tensor) -> torch.Tensor:
    return ae.taesd_decoder(z)


def encode(ae, x01: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, S, S] in 0..1 -> normalised latents, exactly as ComfyUI's VAE.encode computes them."""
    return ae.encode(x01 * 2 - 1)


def decode(ae, z: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> images in 0..1, exactly as ComfyUI's VAE.decode computes them."""
    return ((ae.decode(z) + 1) / 2).clamp(0, 1)


def _grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def _loss(ae, x: torch.Tensor, noise: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    z = encode_raw(ae, x)
    zn = z + noise * torch.randn(z.shape, generator=g)
    y = decode_raw(ae, zn)
    rec = (y - x).abs().mean() + 2 * (y - x).pow(2).mean() + _grad_l1(y, x)
    mean = z.mean((0, 2, 3))
    var = z.var((0, 2, 3))
    reg = (mean.pow(2) + (var - 1).pow(2)).mean()  # per-channel unit scale (the latent format is scalar)
    return rec + 0.01 * reg, rec


def train(images: torch.Tensor, *, steps: int, full_steps: int, crop: int, batch: int, lr: float,
          latent_noise: float, seed: int, desc: str = "autoencoder", resume: Path | None = None,
          save_every: int = 100):
    """images [N, 3, S, S] in 0..1 -> trained TAESD with vae_scale/vae_shift set. ``resume``: a file
    that keeps (and restores) the run's state every ``save_every`` steps."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    ae = build()
    ae.train()
    params = [p for n, p in ae.named_parameters() if n.startswith("taesd_")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    total = steps + full_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))))
    n, side = images.shape[0], images.shape[-1]
    history, start = [], 0
    if resume is not None and resume.is_file():
        st = torch.load(resume, weights_only=False)
        ae.load_state_dict(st["ae"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        g.set_state(st["rng"])
        history, start = st["history"], st["step"]
        log.info("worldbench: resuming the autoencoder at step %d", start)
    bar = progress(range(start, total), desc=desc, total=total - start)
    for step in bar:
        if step < steps and crop < side:
            idx = torch.randint(0, n, (batch,), generator=g)
            cells = (side - crop) // 8 + 1
            oy, ox = (torch.randint(0, cells, (2,), generator=g) * 8).tolist()
            x = images[idx, :, oy:oy + crop, ox:ox + crop]
        else:
            idx = torch.randint(0, n, (max(2, batch // 4),), generator=g)
            x = images[idx]
        if bool(torch.rand(1, generator=g) < 0.5):
            x = x.flip(-1)
        loss, rec = _loss(ae, x, latent_noise, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append(rec.item())
        if step % 20 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(rec=f"{sum(history[-20:]) / len(history[-20:]):.4f}")
        if resume is not None and save_every and (step + 1) % save_every == 0 and step + 1 < total:
            tmp = resume.with_suffix(".tmp")
            torch.save({"ae": ae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "rng": g.get_state(), "history": history, "step": step + 1}, tmp)
            tmp.replace(resume)
    ae.eval()
    normalise(ae, images[: min(n, 512)])
    ae.history = history
    return ae


@torch.no_grad()
def normalise(ae, images: torch.Tensor) -> None:
    """Set vae_scale / vae_shift so that encoded latents of ``images`` have mean 0 and std 1."""
    z = torch.cat([encode_raw(ae, images[i:i + 64]) for i in range(0, images.shape[0], 64)])
    std, mean = float(z.std()), float(z.mean())
    ae.vae_scale.data.fill_(std)
    ae.vae_shift.data.fill_(-mean / std)


@torch.no_grad()
def roundtrip(ae, x01: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([decode(ae, encode(ae, x01[i:i + batch])) for i in range(0, x01.shape[0], batch)])


@torch.no_grad()
def psnr(ae, x01: torch.Tensor) -> float:
    y = roundtrip(ae, x01)
    mse = float((y - x01).pow(2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def state_dict(ae) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in ae.state_dict().items()}

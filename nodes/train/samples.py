"""Sample images while training: [subject reference | training-free result | adapter result] per row."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

import comfy.model_management as mm
import comfy.sample

from ...p3s_core.training import TrainConfig, prepare_reference
from ..apply import P3SApply
from .backend import ComfyBackend


def _conditioning(backend: ComfyBackend, text: str) -> list:
    ctx, pooled = backend.encode_text([text])
    return [[ctx.cpu(), {"pooled_output": pooled.cpu()} if pooled is not None else {}]]


def make_sampler(backend: ComfyBackend, dataset, config: TrainConfig, out_dir: Path, steps: int = 20,
                 cfg: float = 6.0, prompt: str | None = None, seed: int = 0) -> Callable:
    """fn(adapter, step): writes ``out_dir/step_N.png`` for the first sample of ``dataset``.

    Both results run P3S Apply itself on the sample's reference (with the selection the training uses)
    and ComfyUI's sampler, so the row shows what a user of the adapter would get.
    """
    from PIL import Image

    sample0 = dataset[0]
    src = sample0.source
    ref = prepare_reference(sample0, torch.Generator().manual_seed(seed),
                            features=backend.selection_features(src.image),
                            points_range=(2, 2), min_depth=config.min_depth, fill=config.fill)
    pos = _conditioning(backend, prompt or config.prompt_template.format(caption=sample0.caption))
    neg = _conditioning(backend, "")
    side = sample0.image.shape[0]
    out_dir.mkdir(parents=True, exist_ok=True)

    def run(adapter):
        model = P3SApply.execute(backend.patcher, backend.vae, src.image[None], 1.0, 0.0, 1.0,
                                 mask=ref.mask[None], clip_vision=backend.clip_vision, adapter=adapter).result[0]
        latent = torch.zeros(1, 4, side // 8, side // 8)
        noise = comfy.sample.prepare_noise(latent, seed)
        samples = comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", pos, neg, latent,
                                      seed=seed, disable_pbar=True)
        return backend.vae.decode(samples)[0, ..., :3].float().cpu()

    def fn(adapter, step: int) -> Path:
        with torch.no_grad():
            free = run(None)
            tuned = run(adapter)
        mm.load_models_gpu([backend.patcher])
        subject = ref.subject
        if subject.shape[:2] != free.shape[:2]:
            subject = torch.nn.functional.interpolate(subject.movedim(-1, 0)[None], size=free.shape[:2],
                                                      mode="bilinear", align_corners=False)[0].movedim(0, -1)
        row = torch.cat([subject, free, tuned], dim=1).clamp(0, 1)
        path = out_dir / f"step_{step:06d}.png"
        Image.fromarray((row.numpy() * 255).round().astype(np.uint8)).save(path)
        return path

    return fn

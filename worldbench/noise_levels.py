"""Denoising error per noise level: plain, training-free injection and trained adapters (a diagnostic).

Why an adapter does or does not carry identity shows here before any sampling: on held-out pairs (a
reference with look-alikes and the clicked subject's mask; a target image of the same identity in another
scene), the world U-Net predicts the clean target latent from the target noised to a fixed level, with the
reference injected the way the trainer injects it (``nodes/train/backend.py``'s patch, the pack's own code).
The figure is the mean squared error of that prediction (in latent units) per noise level, over the whole
latent and inside the target subject's mask (where identity lives: a subject covers a small part of the
image, so the whole-latent figure dilutes what an injection does to it). An injection
that carries the subject's identity lowers it below plain sampling at the high noise levels, where the
colour is decided; one that only disturbs the image raises it. Same pairs, noise and references in every
row, so rows differ only by the injection.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import WorldConfig
from .export import export
from .pipeline import files

REPO = Path(__file__).resolve().parents[1]
TIMESTEPS = (999, 850, 600, 300)  # of the model's 1000 discrete steps: sigma 14.6, 6.5, 2.3, 0.83 for SD1.5's


def _pack():
    """ComfyUI with the world family registered (``comfy_env.setup``) and the pack's modules reachable."""
    from p3s_host import comfy_env as host_env

    from . import comfy_env
    comfy_env.setup()
    return host_env


def noise_level_errors(cfg: WorldConfig, adapters: list[Path] = (), count: int = 32, batch: int = 8,
                       timesteps: tuple[int, ...] = TIMESTEPS, seed: int = 123) -> dict:
    """``rows`` / ``subject``: {row name: {timestep: mean squared error of the clean-latent prediction}}, over the
    whole latent / inside the target subject's mask; plus the sigmas.

    Rows: ``plain``, ``per_step`` and ``cached`` (training-free) and one per adapter file (its stem), sampled
    in the reference_mode it was trained with. ``count`` val pairs (exported once into the world folder).
    """
    from .bench import adapter_mode
    comfy_env = _pack()
    loading = comfy_env.pack_module("nodes.train.loading")
    backend_mod = comfy_env.pack_module("nodes.train.backend")
    patch_mod = comfy_env.pack_module("nodes.patch")
    core = comfy_env.pack_module("p3s_core.training")
    schedule = comfy_env.pack_module("p3s_core.schedule")
    adapter_mod = comfy_env.pack_module("p3s_core.adapter")
    apply_mod = comfy_env.pack_module("nodes.apply")
    f = files(cfg)
    data = f.dir / f"noise_levels_val_{count}"
    if not (data / "manifest.jsonl").is_file() or len((data / "manifest.jsonl").read_text().splitlines()) != count:
        export(data, count, "val", cfg.side)
    model, clip, vae, cv = loading.load_models(str(f.checkpoint), str(f.clip_vision))
    be = backend_mod.ComfyBackend(model, clip, vae, cv, resolution=cfg.side, selection_features="builtin")
    try:
        dataset = core.SubjectDataset(str(data), cfg.side)
        g = torch.Generator().manual_seed(seed)
        batches = [core.make_batch(dataset, list(range(i, min(i + batch, count))), g)
                   for i in range(0, count, batch)]
        target_masks = [_target_masks(data, b.stems, cfg.side) for b in batches]
        rows: dict[str, tuple] = {"plain": (None, None), "per_step": (None, "per_step"), "cached": (None, "cached")}
        for path in adapters:
            rows[Path(path).stem] = (adapter_mod.load_adapter(path), adapter_mode(Path(path)))
        out: dict = {"sigmas": {}, "rows": {name: {} for name in rows}, "subject": {name: {} for name in rows},
                     "pairs": count}
        for t in timesteps:
            out["sigmas"][t] = float(be.ms.sigma(torch.tensor([float(t)])))
            for name, (adapter, mode) in rows.items():
                errs = [_error(be, patch_mod, schedule, apply_mod, b, m, t, adapter, mode, seed + i)
                        for i, (b, m) in enumerate(zip(batches, target_masks))]
                out["rows"][name][t] = sum(e[0] * len(b) for e, b in zip(errs, batches)) / count
                out["subject"][name][t] = sum(e[1] * len(b) for e, b in zip(errs, batches)) / count
        return out
    finally:
        be.close()


def _target_masks(data: Path, stems, side: int) -> torch.Tensor:
    """[B, side, side] float masks of each pair's target subject (the export's ``masks/<stem>.png``)."""
    return torch.stack([torch.from_numpy(np.asarray(Image.open(data / "masks" / f"{s}.png").convert("L")
                                                    .resize((side, side), Image.BILINEAR), np.float32) / 255.0)
                        for s in stems])


def _error(be, patch_mod, schedule, apply_mod, batch, target_mask: torch.Tensor, t: int, adapter,
           mode: str | None, seed: int) -> tuple[float, float]:
    """Mean squared error of the clean-latent prediction of one batch at timestep ``t``: over the whole latent,
    and inside the target subjects' masks (per image, then averaged)."""
    g = torch.Generator().manual_seed(seed * 1000 + t)
    b = len(batch)
    target = be.encode_latents(batch.images, batch.stems)
    ref = be.encode_latents(batch.subjects)
    mask = F.interpolate(batch.masks[:, None].float(), size=ref.shape[-2:], mode="area")[:, 0]
    ctx, _ = be.encode_text(batch.captions)
    sigma = be.ms.sigma(torch.tensor([float(t)])).float().expand(b).contiguous()
    noise, ref_noise = torch.randn(target.shape, generator=g), torch.randn(ref.shape, generator=g)
    x = be.ms.noise_scaling(sigma, noise, target)
    options = {"cond_or_uncond": [0], "sigmas": sigma}
    with torch.no_grad():
        if mode is None:
            denoised = be.base.apply_model(x, sigma, c_crossattn=ctx, transformer_options=options)
        else:
            tokens = valid = None
            if adapter is not None:
                tokens, valid = apply_mod.subject_clip_tokens(be.clip_vision, batch.subjects, batch.masks)
            patch = patch_mod.P3SPatch(reference_latent=ref, mask=mask, schedule=schedule.WeightSchedule.constant(1.0),
                                       mode=mode, adapter=adapter, subject_tokens=tokens, subject_valid=valid)
            run = patch.new_run(be.ms, noise=ref_noise)
            try:
                denoised = be.base.apply_model(x, sigma, c_crossattn=ctx,
                                               transformer_options=patch.call_options(run, options))
            finally:
                run.clear()
    err = ((denoised.float() - target.float()) ** 2).mean(1)  # [B, h, w]
    m = F.interpolate(target_mask[:, None], size=err.shape[-2:], mode="area")[:, 0]
    inside = (err * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1e-6)
    return float(err.mean()), float(inside.mean())


def table(res: dict, key: str = "rows") -> str:
    """Markdown: one row per injection, one column per noise level, the change against plain in brackets;
    ``key`` "rows" (whole latent) or "subject" (inside the target subject)."""
    ts = list(res["sigmas"])
    head = "| injection | " + " | ".join(f"sigma {res['sigmas'][t]:.2f}" for t in ts) + " |"
    lines = [head, "|---" * (len(ts) + 1) + "|"]
    plain = res[key]["plain"]
    for name, errs in res[key].items():
        cells = [f"{errs[t]:.4f}" + ("" if name == "plain" else f" ({100 * (errs[t] / plain[t] - 1):+.1f} %)")
                 for t in ts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

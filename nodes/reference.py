"""Preparing the subject-only reference: selection, fill (blur, flat, inpaint), VAE latents of the
subject's crop at every level (p3s_core/reference_scale.py)."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

import comfy.sample
import comfy.utils
import latent_preview

from ..p3s_core.fill import FILL_MODES, check_fill, fill_outside
from ..p3s_core.reference_scale import ReferenceLevels, level_sizes, subject_box
from ..p3s_core.rngr import select_subject
from .features import clip_features
from .models import context_dim, native_side

log = logging.getLogger("P3S")

ALL_FILLS = (*FILL_MODES, "inpaint")
MIN_REFERENCE_SIDE = 64  # px: the VAE works at 1/8 size and the U-Net's reference pass needs a few latent pixels


def check_reference_size(reference: torch.Tensor) -> None:
    """Refuse, before any work, a reference too small to encode (e.g. a 1x1 placeholder image)."""
    _, height, width, _ = reference.shape
    if min(height, width) < MIN_REFERENCE_SIDE:
        raise ValueError(f"P3S: reference: the reference image is {width}x{height} px; P3S needs at least "
                         f"{MIN_REFERENCE_SIDE}x{MIN_REFERENCE_SIDE} px (the VAE and the U-Net work on an 8x "
                         "smaller latent). Connect the real reference photo")


def selection_masks(reference: torch.Tensor, points, mask, clip_vision, split_touching: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[R, H, W] 0/1 subject masks from a MASK override or from the points, and the look-alike maps
    (everything subject-like, which the blur fill must not draw from; None for a MASK override)."""
    check_reference_size(reference)
    _, height, width, _ = reference.shape
    if mask is not None:
        m = mask if mask.ndim == 3 else mask[None]
        if m.shape[-2:] != (height, width):
            m = F.interpolate(m[:, None].float(), size=(height, width), mode="bilinear",
                              align_corners=False)[:, 0]
        m = (m > 0.5).float()
        if m.shape[0] not in (1, reference.shape[0]):
            raise ValueError(f"P3S: mask: {m.shape[0]} masks for {reference.shape[0]} reference images; "
                             "give one mask, or one per reference image")
        if m.shape[0] == 1 and reference.shape[0] > 1:
            m = m.expand(reference.shape[0], -1, -1)
        empty = [i for i in range(m.shape[0]) if m[i].sum() == 0]
        if empty:
            raise ValueError(f"P3S: mask: mask {empty[0]} is empty (all zero), so there is no subject to "
                             "inject. Paint the subject white in the mask, or use points instead")
        return m.contiguous(), None
    if points is None:
        raise ValueError("P3S: points: connect P3S_POINTS from a P3S Point Picker, or a MASK to the mask "
                         "input, to say which subject to use")
    pts = points.rescaled(width, height)
    feats = clip_features(clip_vision, reference) if clip_vision is not None else None
    sels = [select_subject(reference[i], pts, None if feats is None else feats[i], split_touching=split_touching)
            for i in range(reference.shape[0])]
    return torch.stack([s.mask for s in sels]), torch.stack([s.lookalike for s in sels])


def fit_to_native(image: torch.Tensor, masks: list, family: str) -> tuple[torch.Tensor, list]:
    """Downscale (never upscale) so the long side is at most the family's native size; sides % 8 == 0.

    ``masks``: [R, H, W] tensors (or None) resized alongside the image."""
    _, h, w, _ = image.shape
    scale = min(1.0, native_side(family) / max(h, w))
    nh, nw = max(8, int(h * scale) // 8 * 8), max(8, int(w * scale) // 8 * 8)
    if (nh, nw) == (h, w):
        return image, masks
    img = F.interpolate(image.movedim(-1, 1), size=(nh, nw), mode="area").movedim(1, -1)
    return img, [None if m is None else (F.interpolate(m[:, None].float(), size=(nh, nw), mode="area")[:, 0] > 0.5
                                         ).float() for m in masks]


def _blur_fill(image: torch.Tensor, masks: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    return torch.stack([fill_outside(image[i, ..., :3], masks[i], "blur", None if exclude is None else exclude[i])
                        for i in range(image.shape[0])])


def inpaint_outside(model, vae, image: torch.Tensor, masks: torch.Tensor, family: str,
                    exclude: torch.Tensor | None = None, seed: int = 0, steps: int = 12,
                    denoise: float = 0.7) -> torch.Tensor:
    """Regenerate everything outside the subject with the MODEL (a short masked denoise).

    Starts from the blurred fill so the new background keeps the reference's colours and layout; runs
    unconditionally (a zero text context: no prompt is needed). Subject pixels are kept exactly.
    """
    start = _blur_fill(image, masks, exclude)
    latent = vae.encode(start[..., :3])
    # SDXL's ADM input = pooled text vector + 6 size embeddings of 256
    pooled = int(model.model.model_config.unet_config.get("adm_in_channels") or 0) - 6 * 256
    extra = {"pooled_output": torch.zeros(1, pooled)} if family == "sdxl" else {}
    cond = [[torch.zeros(1, 77, context_dim(model)), extra]]
    noise = comfy.sample.prepare_noise(latent, seed)
    outside = 1.0 - masks[:, None]
    # ComfyUI's own sampler callback: the node shows progress and honours Cancel like a KSampler.
    callback = latent_preview.prepare_callback(model, steps)
    samples = comfy.sample.sample(model, noise, steps, 1.0, "euler", "normal", cond, cond, latent,
                                  denoise=denoise, noise_mask=outside, seed=seed, callback=callback,
                                  disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED)
    decoded = vae.decode(samples)[..., :3]
    if decoded.shape[1:3] != image.shape[1:3]:
        decoded = F.interpolate(decoded.movedim(-1, 1), size=image.shape[1:3], mode="bilinear",
                                align_corners=False).movedim(1, -1)
    keep = masks[..., None]
    return (image[..., :3] * keep + decoded.to(image.dtype) * (1 - keep)).clamp(0, 1)


def subject_only(model, vae, image: torch.Tensor, masks: torch.Tensor, fill: str, family: str,
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The reference with everything outside the subject removed; ``exclude``: look-alike maps."""
    check_fill(fill, ALL_FILLS)
    if fill == "inpaint":
        return inpaint_outside(model, vae, image, masks, family, exclude)
    if fill == "blur":
        return _blur_fill(image, masks, exclude)
    return torch.stack([fill_outside(image[i, ..., :3], masks[i], fill) for i in range(image.shape[0])])


def encode_reference(model, vae, subject: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE latent of the subject-only reference (in the model's latent space) and the latent-size mask."""
    latent = vae.encode(subject[..., :3])
    latent = model.model.process_latent_in(latent).float().cpu()
    m = F.interpolate(masks[:, None].float(), size=latent.shape[-2:], mode="area")[:, 0]
    return latent, m


def encode_levels(model, vae, subject: torch.Tensor, masks: torch.Tensor) -> ReferenceLevels:
    """The subject's box (plus margin) of the subject-only reference, VAE-encoded at every level.

    ``subject`` [R, H, W, 3] and ``masks`` [R, H, W] at the size the reference was brought to; one box
    (the union of the references' subjects) so the levels stay batched.
    """
    top, left, bottom, right = subject_box(masks)
    crop, crop_masks = subject[:, top:bottom, left:right, :3], masks[:, top:bottom, left:right]
    latents, lmasks, scales = [], [], []
    for h, w, scale in level_sizes(bottom - top, right - left):
        image, level_masks = crop, crop_masks
        if (h, w) != crop.shape[1:3]:
            image = F.interpolate(crop.movedim(-1, 1), size=(h, w), mode="area").movedim(1, -1)
            level_masks = F.interpolate(crop_masks[:, None].float(), size=(h, w), mode="area")[:, 0]
        latent, lmask = encode_reference(model, vae, image, level_masks)
        latents.append(latent)
        lmasks.append(lmask)
        scales.append(scale)
    full_cells = (subject.shape[1] / 8) * (subject.shape[2] / 8)
    log.debug("P3S: reference crop %dx%d of %dx%d, %d levels", right - left, bottom - top, subject.shape[2],
              subject.shape[1], len(latents))
    return ReferenceLevels(latents, lmasks, scales, full_cells)

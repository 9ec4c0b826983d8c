"""The frozen ComfyUI model as a training backend for ``p3s_core.training.train``.

``ComfyBackend.forward`` noises the target latent with the model's own model_sampling and runs
``apply_model`` with a ``P3SPatch`` exactly as P3S Apply installs it (reference pass, bank, injection),
whose adapter is the one being trained: gradients flow through the reference pass into it. The
prediction is converted to eps; the text cross-attention maps of the denoising pass are recorded with
injection and in a plain pass without it (no grad) for the Attention Consistency Loss.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

import comfy.model_management as mm

from ...p3s_core.losses import cross_attention_probs
from ...p3s_core.schedule import WeightSchedule
from ...p3s_core.training import Batch, ForwardOutput
from ..apply import subject_clip_tokens
from ..features import clip_features, clip_token_width
from ..models import context_dim, model_family, transformer_blocks, transformer_layers
from ..patch import PASS_KEY, P3SPatch


class CrossAttentionRecorder:
    """Text cross-attention probabilities (attn2) of the chosen transformer blocks, via forward hooks.

    Records only inside ``recording(into)``, and never during a P3S reference pass.
    """

    def __init__(self, model, which: str = "all"):
        blocks = transformer_blocks(model)
        wanted = None if which in ("all", "", None) else {k.strip() for k in which.split(",")}
        self.keys: list[str] = []
        self._hooks = []
        self._into: list | None = None
        for key, tb in blocks:
            if getattr(tb, "attn2", None) is None or (wanted is not None and key not in wanted):
                continue
            self._hooks.append(tb.attn2.register_forward_hook(self._hook, with_kwargs=True))
            self.keys.append(key)
        if wanted is not None and set(self.keys) != wanted:
            self.close()
            raise ValueError(f"P3S: --acl-layers: unknown layers {sorted(wanted - set(self.keys))}; this model "
                             f"has {[k for k, _ in blocks]}")

    def _hook(self, module, args, kwargs, output):
        if self._into is None:
            return
        to = kwargs.get("transformer_options") or {}
        if "write" in (to.get(PASS_KEY) or {}).values():
            return  # the reference pass: not part of the ACL
        x = args[0]
        ctx = kwargs.get("context")
        ctx = x if ctx is None else ctx
        self._into.append(cross_attention_probs(module.to_q(x), module.to_k(ctx), module.heads))

    @contextlib.contextmanager
    def recording(self, into: list | None):
        """Append the maps of the model calls inside the block to ``into`` (None: record nothing)."""
        self._into = into
        try:
            yield into
        finally:
            self._into = None

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


class ComfyBackend:
    """The frozen model, CLIP, VAE and CLIP vision of a training run (see the module docstring)."""

    def __init__(self, model, clip, vae, clip_vision, *, resolution: int, precision: str = "fp32",
                 acl_layers: str = "all", selection_features: str = "clip", reference_mode: str = "cached"):
        self.patcher, self.clip, self.vae, self.clip_vision = model, clip, vae, clip_vision
        self.family = model_family(model)
        self.layers = transformer_layers(model)
        self.ctx_dim = context_dim(model)
        self.clip_width = clip_token_width(clip_vision)
        mm.load_models_gpu([model])
        self.base = model.model
        self.base.requires_grad_(False)
        self.base.eval()
        self.device = mm.get_torch_device()
        self.resolution = resolution
        self.precision = precision
        self.selection = selection_features
        self.reference_mode = reference_mode  # as P3S Apply's: cached = the clean reference (sigma_min)
        self.ms = self.base.model_sampling
        self._text: dict[str, tuple] = {}
        self._latents: dict[str, torch.Tensor] = {}
        self.recorder = CrossAttentionRecorder(model, acl_layers)
        self.acl_keys = self.recorder.keys

    def forward(self, adapter, batch: Batch, generator: torch.Generator, record_acl: bool) -> ForwardOutput:
        b, side = len(batch), batch.images.shape[1]
        target = self.encode_latents(batch.images, batch.stems)
        ref = self.encode_latents(batch.subjects)
        lmask = F.interpolate(batch.masks[:, None].float(), size=ref.shape[-2:], mode="area")[:, 0]
        with torch.no_grad():
            tokens, valid = subject_clip_tokens(self.clip_vision, batch.subjects, batch.masks)
        ctx, pooled = self.encode_text(batch.captions)
        extra = self._extra(pooled, side)
        # one timestep per batch: in per_step mode the reference pass is noised to the batch's sigma, as at
        # sampling time; in cached mode it runs at sigma_min whatever the batch's sigma, as P3S Apply's cache
        t = torch.randint(0, self.ms.sigmas.shape[0], (1,), generator=generator)
        sigma = self.ms.sigma(t.float()).float().to(self.device).expand(b).contiguous()
        noise = torch.randn(target.shape, generator=generator).to(self.device)
        ref_noise = torch.randn(ref.shape, generator=generator).to(self.device)
        x = self.ms.noise_scaling(sigma, noise, target)
        patch = P3SPatch(reference_latent=ref, mask=lmask.cpu(), schedule=WeightSchedule.constant(1.0),
                         mode=self.reference_mode, adapter=adapter, subject_tokens=tokens, subject_valid=valid)
        run = patch.new_run(self.ms, noise=ref_noise)
        plain = {"cond_or_uncond": [0], "sigmas": sigma}
        maps_with: list = []
        maps_without: list = []
        try:
            with self.autocast():
                with self.recorder.recording(maps_with if record_acl else None):
                    denoised = self.base.apply_model(x, sigma, c_crossattn=ctx,
                                                     transformer_options=patch.call_options(run, plain), **extra)
                if record_acl:
                    with self.recorder.recording(maps_without), torch.no_grad():
                        self.base.apply_model(x, sigma, c_crossattn=ctx, transformer_options=dict(plain), **extra)
        finally:
            run.clear()
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        pred = (x.float() - denoised.float()) / s  # eps from the denoised output (EPS and V models alike)
        subject = (F.interpolate(batch.target_masks[:, None].float(), size=target.shape[-2:], mode="area")[:, 0]
                   .to(self.device) if batch.target_masks is not None else None)
        return ForwardOutput(pred, noise, maps_with, maps_without, sigma, subject)

    def close(self) -> None:
        """Remove the attention recorders from the U-Net."""
        self.recorder.close()

    def selection_features(self, image: torch.Tensor) -> torch.Tensor | None:
        if self.selection != "clip":
            return None
        with torch.no_grad():
            return clip_features(self.clip_vision, image[None])[0].float().cpu()

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        out_c, out_p = [], []
        for c in captions:
            if c not in self._text:
                with torch.no_grad():
                    cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(c), return_pooled=True)
                self._text[c] = (cond.float().cpu(), pooled.float().cpu() if pooled is not None else None)
            out_c.append(self._text[c][0])
            out_p.append(self._text[c][1])
        length = max(t.shape[1] for t in out_c)
        if any(t.shape[1] != length for t in out_c):  # long prompts: pad chunks by repeating the last
            out_c = [torch.cat([t] + [t[:, -77:]] * ((length - t.shape[1]) // 77), dim=1) for t in out_c]
        ctx = torch.cat(out_c).to(self.device)
        pooled = torch.cat(out_p).to(self.device) if all(p is not None for p in out_p) else None
        return ctx, pooled

    def encode_latents(self, images: torch.Tensor, keys: list[str] | None = None) -> torch.Tensor:
        """VAE latents in the model's space; with ``keys``, cached per key (targets repeat across steps)."""
        missing = [i for i, k in enumerate(keys or [None] * len(images)) if k is None or k not in self._latents]
        if missing:
            with torch.no_grad():
                lat = self.base.process_latent_in(self.vae.encode(images[missing][..., :3])).float().cpu()
            if keys is None:
                return lat.to(self.device)
            for i, row in zip(missing, lat):
                self._latents[keys[i]] = row
        return torch.stack([self._latents[k] for k in keys]).to(self.device)

    def _extra(self, pooled: torch.Tensor | None, side: int) -> dict:
        if getattr(self.base, "adm_channels", 0) and pooled is not None:  # SDXL: pooled text + size embedding
            y = self.base.encode_adm(pooled_output=pooled, width=side, height=side, crop_w=0, crop_h=0,
                                     target_width=side, target_height=side)
            return {"y": y.to(self.device)}
        return {}

    def autocast(self):
        if self.device.type != "cuda" or self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.float16 if self.precision == "fp16" else torch.bfloat16)

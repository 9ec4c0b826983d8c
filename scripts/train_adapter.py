#!/usr/bin/env python
"""Train a P3S adapter for an SD1.5 or SDXL checkpoint (see docs/training.md).

    python scripts/train_adapter.py --comfyui-dir ~/ComfyUI \\
        --checkpoint v1-5-pruned-emaonly.safetensors --clip-vision CLIP-ViT-H-14.safetensors \\
        --data my_subjects/ --output models/p3s/p3s_sd15.safetensors --steps 4000

The base checkpoint and the CLIP vision model load through ComfyUI's own loaders (so every checkpoint
ComfyUI loads works), and the training forward pass runs the pack's own P3S patch (nodes/patch.py):
the same reference pass, bank and injection that P3S Apply installs at sampling time. The loop, the
dataset, the losses and checkpoints are ``p3s_core.training`` (plain torch).

Multi-GPU: ``torchrun --nproc_per_node N scripts/train_adapter.py ...`` (gradients of the adapter are
averaged across processes, rank 0 writes every file).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("P3S")


# ---- ComfyUI and the pack ------------------------------------------------------------------------
def setup_comfy(comfyui_dir: str | None, cpu: bool | None = None):
    """Put ComfyUI on sys.path (without letting it parse our argv) and pick the device."""
    import torch

    if "comfy.model_management" not in sys.modules:
        d = comfyui_dir or os.environ.get("COMFYUI_DIR")
        if not d or not (Path(d) / "comfy").is_dir():
            raise SystemExit(f"P3S: --comfyui-dir / $COMFYUI_DIR must name a ComfyUI checkout (with comfy/ in it); "
                             f"got {d!r}")
        sys.path.insert(0, str(Path(d).resolve()))
        import comfy.options
        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args
        if cpu or (cpu is None and not torch.cuda.is_available()):
            args.cpu = True
        if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
            args.cuda_device = None
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    import comfy.model_management  # noqa: F401
    return sys.modules["comfy.model_management"]


def load_pack():
    """The P3S pack as a package (reuses it when a ComfyUI process already loaded it)."""
    init = str(REPO / "__init__.py")
    for name, mod in list(sys.modules.items()):
        if getattr(mod, "__file__", None) and os.path.realpath(mod.__file__) == os.path.realpath(init):
            return mod
    spec = importlib.util.spec_from_file_location("p3s_pack", init, submodule_search_locations=[str(REPO)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["p3s_pack"] = mod
    spec.loader.exec_module(mod)
    return mod


def pack_module(pack, dotted: str):
    return importlib.import_module(pack.__name__ + "." + dotted)


def register_tiny() -> None:
    """Test-only: make the tiny random test models (tests/support/tiny_models.py) loadable."""
    sys.path.insert(0, str(REPO / "tests" / "support"))
    import tiny_models
    tiny_models.register()


def resolve_model_path(name: str, folder: str) -> str:
    if Path(name).is_file():
        return str(Path(name))
    import folder_paths
    full = folder_paths.get_full_path(folder, name)
    if full is None:
        raise SystemExit(f"P3S: {name!r} is neither a file nor a model in {folder}: searched "
                         f"{', '.join(folder_paths.get_folder_paths(folder))}")
    return full


def load_models(checkpoint: str, clip_vision: str, precision: str = "fp32"):
    """(ModelPatcher, CLIP, VAE, CLIPVisionModel) through ComfyUI's loaders."""
    import torch
    import comfy.clip_vision
    import comfy.model_management as mm
    import comfy.sd

    opts = {}
    if mm.get_torch_device().type == "cuda":
        opts["dtype"] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(resolve_model_path(checkpoint, "checkpoints"),
                                                             model_options=opts)[:3]
    cv = comfy.clip_vision.load(resolve_model_path(clip_vision, "clip_vision"))
    if model is None or clip is None or vae is None:
        raise SystemExit(f"P3S: {checkpoint} must be a full checkpoint (U-Net + CLIP + VAE)")
    return model, clip, vae, cv


# ---- the training backend ------------------------------------------------------------------------
class ComfyBackend:
    """The frozen ComfyUI model for ``p3s_core.training.train``.

    forward(): noises the target latent with the model's own model_sampling, runs ``base.apply_model``
    with a P3SPatch (APPLY_MODEL wrapper + attn1 patch, exactly as installed by P3S Apply) whose adapter
    is the one being trained (gradients flow through the reference pass into it), converts the
    prediction to eps, and records the text cross-attention maps (attn2) of the denoising pass with
    injection and of a plain pass without it (no grad) through forward hooks.
    """

    def __init__(self, pack, model, clip, vae, clip_vision, *, resolution: int, precision: str = "fp32",
                 acl_layers: str = "all", selection_features: str = "clip"):
        import torch
        import comfy.model_management as mm

        self.pack, self.patcher, self.clip, self.vae, self.clip_vision = pack, model, clip, vae, clip_vision
        models = pack_module(pack, "nodes.models")
        feats = pack_module(pack, "nodes.features")
        self.patch_mod = pack_module(pack, "nodes.patch")
        self.apply_mod = pack_module(pack, "nodes.apply")
        self._losses = pack_module(pack, "p3s_core.losses")
        self._training = pack_module(pack, "p3s_core.training")
        self._clip_features = feats.clip_features
        self.family = models.model_family(model)
        self.layers = models.transformer_layers(model)
        self.ctx_dim = models.context_dim(model)
        self.clip_width = feats.clip_token_width(clip_vision)
        mm.load_models_gpu([model])
        self.base = model.model
        self.base.requires_grad_(False)
        self.base.eval()
        self.device = mm.get_torch_device()
        self.resolution = resolution
        self.precision = precision
        self.selection = selection_features
        self.ms = self.base.model_sampling
        self._text: dict[str, tuple] = {}
        self._latents: dict[str, "torch.Tensor"] = {}
        self._record = None
        self._hooks = []
        self.acl_keys = self._attach_hooks(acl_layers)

    # -- attention recording
    def _attach_hooks(self, which: str) -> list[str]:
        inj = pack_module(self.pack, "p3s_core.injection")
        unet = self.base.diffusion_model
        keys = []
        groups = (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks))
        wanted = None if which in ("all", "", None) else {k.strip() for k in which.split(",")}
        for name, blocks in groups:
            for i, block in enumerate(blocks):
                for module in block:
                    for j, tb in enumerate(getattr(module, "transformer_blocks", None) or []):
                        key = inj.layer_key((name, i), j)
                        if getattr(tb, "attn2", None) is None or (wanted is not None and key not in wanted):
                            continue
                        self._hooks.append(tb.attn2.register_forward_hook(self._hook(key), with_kwargs=True))
                        keys.append(key)
        if wanted is not None and set(keys) != wanted:
            raise SystemExit(f"P3S: --acl-layers: unknown layers {sorted(wanted - set(keys))}; this model has "
                             f"{[k for k, _ in self.layers]}")
        return keys

    def _hook(self, key):
        def hook(module, args, kwargs, output):
            if self._record is None:
                return
            to = kwargs.get("transformer_options") or {}
            if "write" in (to.get("p3s") or {}).values():
                return  # the reference pass: not part of the ACL
            x = args[0]
            ctx = kwargs.get("context")
            ctx = x if ctx is None else ctx
            self._record.append(self._losses.cross_attention_probs(module.to_q(x), module.to_k(ctx), module.heads))
        return hook

    def forward(self, adapter, batch, generator, record_acl: bool):
        import torch
        import torch.nn.functional as F
        import comfy.patcher_extension as pe

        b, side = len(batch), batch.images.shape[1]
        target = self.encode_latents(batch.images, batch.stems)
        ref = self.encode_latents(batch.subjects)
        lmask = F.interpolate(batch.masks[:, None].float(), size=ref.shape[-2:], mode="area")[:, 0]
        with torch.no_grad():
            tokens, valid = self.apply_mod.subject_clip_tokens(self.clip_vision, batch.subjects, batch.masks)
        ctx, pooled = self.encode_text(batch.captions)
        extra = self._extra(pooled, b, side)
        # one timestep per batch: the reference pass is noised to the batch's sigma, as at sampling time
        t = torch.randint(0, self.ms.sigmas.shape[0], (1,), generator=generator)
        sigma = self.ms.sigma(t.float()).float().to(self.device).expand(b).contiguous()
        noise = torch.randn(target.shape, generator=generator).to(self.device)
        ref_noise = torch.randn(ref.shape, generator=generator).to(self.device)
        x = self.ms.noise_scaling(sigma, noise, target)
        patch = self.patch_mod.P3SPatch(reference_latent=ref, mask=lmask.cpu(), weight=1.0, start_percent=0.0,
                                        end_percent=1.0, mode="per_step", adapter=adapter,
                                        subject_tokens=tokens, subject_valid=valid)
        patch._noise = ref_noise
        to = {"patches": {"attn1_patch": [patch.attn1_patch]},
              "wrappers": {pe.WrappersMP.APPLY_MODEL: {patch.id: [patch.apply_model_wrapper]}},
              "cond_or_uncond": [0], "sigmas": sigma}
        maps_with, maps_without = [], []
        try:
            with self.autocast():
                self._record = maps_with if record_acl else None
                denoised = self.base.apply_model(x, sigma, c_crossattn=ctx, transformer_options=to, **extra)
                if record_acl:
                    self._record = maps_without
                    with torch.no_grad():
                        self.base.apply_model(x, sigma, c_crossattn=ctx,
                                              transformer_options={"cond_or_uncond": [0], "sigmas": sigma}, **extra)
        finally:
            self._record = None
            patch.bank.clear()
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        pred = (x.float() - denoised.float()) / s  # eps from the denoised output (EPS and V models alike)
        return self._training.ForwardOutput(pred, noise, maps_with, maps_without)

    def close(self) -> None:
        """Remove the attention hooks from the U-Net."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def selection_features(self, image):
        if self.selection != "clip":
            return None
        import torch
        with torch.no_grad():
            return self._clip_features(self.clip_vision, image[None])[0].float().cpu()

    def encode_text(self, captions: list[str]):
        import torch
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

    def encode_latents(self, images, keys=None):
        import torch
        missing = [i for i, k in enumerate(keys or [None] * len(images)) if k is None or k not in self._latents]
        if missing:
            with torch.no_grad():
                lat = self.base.process_latent_in(self.vae.encode(images[missing][..., :3])).float().cpu()
            if keys is None:
                return lat.to(self.device)
            for i, row in zip(missing, lat):
                self._latents[keys[i]] = row
        return torch.stack([self._latents[k] for k in keys]).to(self.device)

    def _extra(self, pooled, batch_size: int, side: int) -> dict:
        if getattr(self.base, "adm_channels", 0) and pooled is not None:  # SDXL: pooled text + size embedding
            y = self.base.encode_adm(pooled_output=pooled, width=side, height=side, crop_w=0, crop_h=0,
                                     target_width=side, target_height=side)
            return {"y": y.to(self.device)}
        return {}

    def autocast(self):
        import contextlib
        import torch
        if self.device.type != "cuda" or self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.float16 if self.precision == "fp16" else torch.bfloat16)

def make_backend(pack, model, clip, vae, clip_vision, **kw) -> ComfyBackend:
    return ComfyBackend(pack, model, clip, vae, clip_vision, **kw)


# ---- sample images -------------------------------------------------------------------------------
def make_sampler(backend: ComfyBackend, dataset, config, out_dir: Path, steps: int = 20, cfg: float = 6.0,
                 prompt: str | None = None, seed: int = 0):
    """fn(adapter, step): writes samples/step_N.png = [subject reference | training-free | adapter]."""
    import numpy as np
    import torch
    from PIL import Image

    import comfy.model_management as mm
    import comfy.sample

    training = backend._training
    apply_node = backend.apply_mod.P3SApply
    sample0 = dataset[0]
    ref = training.prepare_reference(sample0, torch.Generator().manual_seed(seed),
                                     features=backend.selection_features(sample0.image),
                                     points_range=(2, 2), min_depth=config.min_depth, fill=config.fill)
    text = prompt or config.prompt_template.format(caption=sample0.caption)
    ctx, pooled = backend.encode_text([text])
    neg, npooled = backend.encode_text([""])
    extra = {"pooled_output": pooled.cpu()} if pooled is not None else {}
    nextra = {"pooled_output": npooled.cpu()} if npooled is not None else {}
    pos_c, neg_c = [[ctx.cpu(), extra]], [[neg.cpu(), nextra]]
    side = sample0.image.shape[0]
    out_dir.mkdir(parents=True, exist_ok=True)

    def run(adapter):
        model = apply_node.execute(backend.patcher, backend.vae, sample0.image[None], 1.0, 0.0, 1.0,
                                   mask=ref.mask[None], clip_vision=backend.clip_vision, adapter=adapter).result[0]
        latent = torch.zeros(1, 4, side // 8, side // 8)
        noise = comfy.sample.prepare_noise(latent, seed)
        samples = comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", pos_c, neg_c, latent,
                                      seed=seed, disable_pbar=True)
        return backend.vae.decode(samples)[0, ..., :3].float().cpu()

    def fn(adapter, step):
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


# ---- command line --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a P3S adapter (docs/training.md).")
    p.add_argument("--comfyui-dir", default=None, help="ComfyUI checkout (default: $COMFYUI_DIR)")
    p.add_argument("--checkpoint", required=True, help="base checkpoint: a path, or a name in models/checkpoints")
    p.add_argument("--clip-vision", required=True, help="CLIP vision model: a path, or a name in models/clip_vision")
    p.add_argument("--data", required=True, help="dataset folder: images/, captions/, masks/ or points/")
    p.add_argument("--output", required=True, help="adapter file to write (.safetensors)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=1, help="per process")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rank", type=int, default=16, help="rank of the low-rank reference deltas")
    p.add_argument("--acl-weight", type=float, default=100.0, help="lambda of the Attention Consistency Loss (0: off)")
    p.add_argument("--acl-layers", default="all", help="'all' or comma-separated layer keys, e.g. input.4.0,middle.0.0")
    p.add_argument("--resolution", type=int, default=None, help="training side in pixels (default 512 SD1.5, 1024 SDXL)")
    p.add_argument("--sample-every", type=int, default=0, help="write sample images every N steps (0: never)")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--sample-prompt", default=None, help="prompt of the sample images (default: first caption)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="write a resumable checkpoint every N steps (0: never)")
    p.add_argument("--resume", default=None, help="a *.stepNNNNNN.pt checkpoint to continue from")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="U-Net weights + autocast on GPU; CPU always runs fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-template", default="{caption}", help="e.g. 'a photo of {caption}'")
    p.add_argument("--selection-features", choices=("clip", "builtin"), default="clip",
                   help="features for the on-the-fly RNGR selection (clip: as P3S Apply with CLIP vision)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--register-tiny", action="store_true", help=argparse.SUPPRESS)  # tests: tiny random models
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    setup_comfy(args.comfyui_dir, cpu=True if args.cpu else None)
    dist_ctx = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        import torch.distributed as dist
        dist.init_process_group("nccl" if torch.cuda.is_available() and not args.cpu else "gloo")
    if args.register_tiny:
        register_tiny()
    pack = load_pack()
    training = pack_module(pack, "p3s_core.training")
    dist_ctx = training.DistContext.from_env()
    result = run_training(pack, args, dist_ctx)
    if dist_ctx.world_size > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    return result


def run_training(pack, args, dist_ctx=None):
    """Everything after ComfyUI is importable: load, build the backend, train. Returns TrainResult."""
    training = pack_module(pack, "p3s_core.training")
    model, clip, vae, cv = load_models(args.checkpoint, args.clip_vision, args.precision)
    models = pack_module(pack, "nodes.models")
    family = models.model_family(model)
    resolution = args.resolution or (1024 if family == "sdxl" else 512)
    dataset = training.SubjectDataset(args.data, resolution)
    config = training.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, rank=args.rank,
                                  acl_weight=args.acl_weight, seed=args.seed, sample_every=args.sample_every,
                                  checkpoint_every=args.checkpoint_every, prompt_template=args.prompt_template,
                                  precision=args.precision)
    config.validate()
    backend = make_backend(pack, model, clip, vae, cv, resolution=resolution, precision=args.precision,
                           acl_layers=args.acl_layers, selection_features=args.selection_features)
    output = Path(args.output)
    if output.suffix.lower() != ".safetensors":
        raise SystemExit(f"P3S: --output {output} must end in .safetensors")
    sampler = None
    if args.sample_every and (dist_ctx is None or dist_ctx.is_main):
        sampler = make_sampler(backend, dataset, config, output.with_name(output.stem + "_samples"),
                               steps=args.sample_steps, prompt=args.sample_prompt, seed=args.seed)
    res = training.train(backend, dataset, config, output, resume=args.resume, sample_fn=sampler, dist=dist_ctx,
                         progress=not args.no_progress,
                         extra_metadata={"p3s_base_checkpoint": Path(args.checkpoint).name,
                                         "p3s_clip_vision": Path(args.clip_vision).name})
    if dist_ctx is None or dist_ctx.is_main:
        log.info("P3S: wrote %s (%d steps, final loss %.5f, %.3f s/step); loss curve %s", output,
                 res.history[-1]["step"] if res.history else 0, res.history[-1]["loss"] if res.history else float("nan"),
                 res.seconds_per_step, output.with_suffix(".loss.png"))
    return res


if __name__ == "__main__":
    main()

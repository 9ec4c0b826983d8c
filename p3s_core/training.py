"""Training a P3S adapter with the Attention Consistency Loss (plain torch; never imports comfy).

The pieces, usable on their own (``scripts/train_adapter.py`` wires them to ComfyUI):

- ``SubjectDataset``: a folder ``images/*.png|jpg`` + same-stem ``captions/*.txt`` + either
  ``masks/*.png`` (white = subject) or ``points/*.json`` (our points JSON). Images are resized
  (short side) and centre-cropped to a square ``resolution``; masks and points follow the crop.
- ``interior_points``: random clicks well inside a mask (distance to the boundary above a fraction
  of the mask's largest inscribed radius), so training clicks look like a user's.
- ``prepare_reference``: RNGR (``p3s_core.rngr.select_subject``) on those clicks, on the fly, so the
  adapter trains on the same selection users get; everything outside it is filled.
- ``compute_loss``: L = L_diffusion + lambda * ACL (``p3s_core.losses``).
- ``train``: the loop (AdamW over the adapter only, gradient clipping, optional GradScaler and
  gradient averaging across processes), checkpoints and resume, final safetensors adapter and loss
  curve. The model side is a *backend* object (duck-typed, see ``Backend``) so this module stays
  free of ComfyUI.

Choices the paper leaves open (ours, easy to change): one timestep per batch (the reference pass is
noised to the same sigma as the batch, as at sampling time), eps-space MSE, AdamW, clicks sampled
1..3 per step from the mask interior, blur fill, ACL over every cross-attention layer by default.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from .adapter import AdapterSpec, P3SAdapter, adapter_state_dict, load_adapter_state_dict, save_adapter
from .losses import attention_consistency_loss, diffusion_loss, total_loss
from .points import PointSet
from .rngr import fill_outside, select_subject

log = logging.getLogger("P3S")

__all__ = ["IMAGE_EXTS", "TrainSample", "SubjectDataset", "interior_points", "Reference", "prepare_reference",
           "Batch", "make_batch", "ForwardOutput", "Backend", "compute_loss", "TrainConfig", "TrainResult",
           "DistContext", "make_adapter", "save_checkpoint", "load_checkpoint", "write_loss_curve", "train",
           "evaluate", "CHECKPOINT_FORMAT"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
CHECKPOINT_FORMAT = "p3s-train-checkpoint"


# ---- dataset -------------------------------------------------------------------------------------
@dataclass
class TrainSample:
    stem: str
    image: torch.Tensor                  # [S, S, 3] float 0..1
    caption: str
    mask: torch.Tensor | None = None     # [S, S] float 0/1 (instance mask of the subject)
    points: PointSet | None = None       # clicks in the pixels of ``image``


def _square_crop_box(w: int, h: int) -> tuple[int, int, int]:
    side = min(w, h)
    return (w - side) // 2, (h - side) // 2, side


class SubjectDataset:
    """Folder dataset, see the module docstring and docs/training.md. Samples load lazily."""

    def __init__(self, root: str | os.PathLike, resolution: int = 512):
        self.root = Path(root)
        self.resolution = int(resolution)
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"P3S: resolution {resolution} must be a multiple of 8 (>= 8)")
        images_dir = self.root / "images"
        if not images_dir.is_dir():
            raise ValueError(f"P3S: dataset {self.root}: no images/ folder. Expected images/, captions/ and "
                             "masks/ or points/ (see docs/training.md)")
        self.images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.images:
            raise ValueError(f"P3S: dataset {self.root}: images/ holds no {'/'.join(IMAGE_EXTS)} files")
        problems = []
        for p in self.images:
            if not (self.root / "captions" / f"{p.stem}.txt").is_file():
                problems.append(f"captions/{p.stem}.txt missing")
            if not ((self.root / "masks" / f"{p.stem}.png").is_file()
                    or (self.root / "points" / f"{p.stem}.json").is_file()):
                problems.append(f"neither masks/{p.stem}.png nor points/{p.stem}.json")
        if problems:
            raise ValueError(f"P3S: dataset {self.root}: {len(problems)} problem(s): {'; '.join(problems[:5])}"
                             " — every image needs a caption and a mask or points file with the same stem")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> TrainSample:
        from PIL import Image

        path = self.images[i]
        stem, s = path.stem, self.resolution
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            x0, y0, side = _square_crop_box(w, h)
            image = im.crop((x0, y0, x0 + side, y0 + side)).resize((s, s), Image.BICUBIC)
        img = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        caption = (self.root / "captions" / f"{stem}.txt").read_text(encoding="utf-8").strip()
        mask = points = None
        mpath = self.root / "masks" / f"{stem}.png"
        if mpath.is_file():
            with Image.open(mpath) as m:
                m = m.convert("L")
                if m.size != (w, h):
                    raise ValueError(f"P3S: dataset: masks/{stem}.png is {m.size[0]}x{m.size[1]} but the image "
                                     f"is {w}x{h}: masks must have the image's size")
                m = m.crop((x0, y0, x0 + side, y0 + side)).resize((s, s), Image.BILINEAR)
            mask = (torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0) > 0.5).float()
            if mask.sum() == 0:
                raise ValueError(f"P3S: dataset: masks/{stem}.png has no white (subject) pixels inside the "
                                 "centre crop: paint the subject white")
        ppath = self.root / "points" / f"{stem}.json"
        if ppath.is_file():
            pts = PointSet.from_json(ppath.read_text(encoding="utf-8"), width=w, height=h).rescaled(w, h)
            sc = s / side
            points = PointSet.from_pixels([((x - x0) * sc, (y - y0) * sc) for x, y in pts.positive],
                                          [((x - x0) * sc, (y - y0) * sc) for x, y in pts.negative], s, s)
            try:
                points.validate()
            except ValueError as exc:
                raise ValueError(f"P3S: dataset: points/{stem}.json after the centre crop: {exc}") from None
        return TrainSample(stem, img, caption, mask, points)


def interior_points(mask: torch.Tensor, n: int, generator: torch.Generator,
                    min_depth: float = 0.35) -> list[tuple[float, float]]:
    """``n`` random pixel centres (x, y) inside ``mask`` [H, W] whose distance to the boundary is at
    least ``min_depth`` x the largest distance in the mask (the deepest pixel is always eligible)."""
    from scipy import ndimage

    m = mask.detach().cpu().numpy() > 0.5
    if not m.any():
        raise ValueError("P3S: interior_points: the mask is empty")
    dt = ndimage.distance_transform_edt(m)
    ys, xs = np.nonzero(dt >= max(min_depth * dt.max(), 1e-6))
    pick = torch.randint(len(ys), (int(n),), generator=generator).tolist()
    return [(float(xs[j]) + 0.5, float(ys[j]) + 0.5) for j in pick]


@dataclass
class Reference:
    mask: torch.Tensor       # [H, W] 0/1 selection (what P3S Apply would use)
    subject: torch.Tensor    # [H, W, 3] subject-only reference
    points: PointSet
    fallback: bool = False   # True when RNGR selected nothing and the instance mask was used


def prepare_reference(sample: TrainSample, generator: torch.Generator, *, features: torch.Tensor | None = None,
                      points_range: tuple[int, int] = (1, 3), min_depth: float = 0.35,
                      fill: str = "blur") -> Reference:
    """Clicks (from the points file, else sampled inside the mask) -> RNGR selection -> filled reference."""
    h, w = sample.image.shape[:2]
    if sample.points is not None:
        pts = sample.points
    else:
        lo, hi = points_range
        k = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        pts = PointSet.from_pixels(interior_points(sample.mask, k, generator, min_depth), [], w, h)
    try:
        sel_mask = select_subject(sample.image, pts, features, fill=fill).mask
        fallback = False
    except ValueError:
        if sample.mask is None:
            raise
        sel_mask, fallback = sample.mask, True  # RNGR found nothing: train on the instance mask
    return Reference(sel_mask.float(), fill_outside(sample.image, sel_mask, fill), pts, fallback)


@dataclass
class Batch:
    stems: list[str]
    captions: list[str]            # after the prompt template
    images: torch.Tensor           # [B, S, S, 3] targets
    subjects: torch.Tensor         # [B, S, S, 3] subject-only references
    masks: torch.Tensor            # [B, S, S] selections

    def __len__(self) -> int:
        return len(self.stems)


def make_batch(dataset, indices: Sequence[int], generator: torch.Generator, *, template: str = "{caption}",
               features_fn: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
               points_range: tuple[int, int] = (1, 3), min_depth: float = 0.35, fill: str = "blur") -> Batch:
    samples = [dataset[int(i)] for i in indices]
    refs = [prepare_reference(s, generator, features=features_fn(s.image) if features_fn else None,
                              points_range=points_range, min_depth=min_depth, fill=fill) for s in samples]
    return Batch([s.stem for s in samples], [template.format(caption=s.caption) for s in samples],
                 torch.stack([s.image for s in samples]), torch.stack([r.subject for r in refs]),
                 torch.stack([r.mask for r in refs]))


# ---- the model side ------------------------------------------------------------------------------
@dataclass
class ForwardOutput:
    pred: torch.Tensor                     # predicted noise (eps) [B, C, h, w], with grad into the adapter
    target: torch.Tensor                   # the noise that was added
    maps_with: list[torch.Tensor] = field(default_factory=list)     # attn2 probs, injection on
    maps_without: list[torch.Tensor] = field(default_factory=list)  # attn2 probs, no injection (no grad)


class Backend(Protocol):
    """What ``train`` needs from the frozen diffusion model (``scripts/train_adapter.py`` has the ComfyUI one)."""
    family: str
    layers: list[tuple[str, int]]
    ctx_dim: int
    clip_width: int
    device: torch.device

    def selection_features(self, image: torch.Tensor) -> torch.Tensor | None: ...
    def forward(self, adapter: P3SAdapter, batch: Batch, generator: torch.Generator,
                record_acl: bool) -> ForwardOutput: ...


def compute_loss(out: ForwardOutput, acl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_diffusion + lambda * ACL, and the parts as floats for logging (acl NaN when not recorded)."""
    diff = diffusion_loss(out.pred, out.target)
    acl = attention_consistency_loss(out.maps_with, out.maps_without) if out.maps_with else None
    loss = total_loss(diff, acl, acl_weight)
    return loss, {"loss": float(loss.detach()), "diffusion": float(diff.detach()),
                  "acl": float(acl.detach()) if acl is not None else float("nan")}


# ---- configuration, checkpoints ------------------------------------------------------------------
@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    rank: int = 16
    alpha: float | None = None          # None: alpha = rank (delta scale 1)
    acl_weight: float = 1.0             # lambda
    seed: int = 0
    sample_every: int = 0               # 0: never
    checkpoint_every: int = 0           # 0: only the final adapter
    prompt_template: str = "{caption}"
    points_range: tuple[int, int] = (1, 3)
    min_depth: float = 0.35
    fill: str = "blur"
    weight_decay: float = 0.0
    grad_clip: float = 1.0              # 0: off
    precision: str = "fp32"             # fp32 | fp16 | bf16 (autocast on GPU only; the backend applies it)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "rank"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"P3S: --{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"P3S: --lr must be > 0, got {self.lr}")
        if not (self.acl_weight >= 0 and math.isfinite(self.acl_weight)):
            raise ValueError(f"P3S: --acl-weight must be >= 0, got {self.acl_weight}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"P3S: --precision must be fp32, fp16 or bf16, got {self.precision!r}")
        if "{caption}" not in self.prompt_template:
            raise ValueError(f"P3S: --prompt-template {self.prompt_template!r} must contain {{caption}}")
        lo, hi = self.points_range
        if not 1 <= lo <= hi:
            raise ValueError(f"P3S: points_range {self.points_range} must satisfy 1 <= low <= high")


def make_adapter(backend, config: TrainConfig) -> P3SAdapter:
    """A fresh (zero-effect) adapter for the backend's model, fp32 on its device."""
    g = torch.random.fork_rng(devices=[])
    with g:  # adapter init depends on the seed only, not on what ran before
        torch.manual_seed(config.seed)
        spec = AdapterSpec(family=backend.family, rank=config.rank,
                           alpha=float(config.alpha if config.alpha is not None else config.rank),
                           clip_width=backend.clip_width, ctx_dim=backend.ctx_dim, layers=backend.layers)
        adapter = P3SAdapter(spec)
    return adapter.to(device=backend.device, dtype=torch.float32)


def save_checkpoint(path: str | os.PathLike, adapter: P3SAdapter, optimizer: torch.optim.Optimizer, step: int,
                    history: list[dict], generator: torch.Generator, config: TrainConfig | None = None,
                    scaler=None) -> Path:
    """Training state (adapter, optimizer, step, loss history, RNG states) -> ``path`` (atomic).

    A torch file of tensors, numbers and strings only: ``load_checkpoint`` reads it with
    ``weights_only=True`` (no pickle code runs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT, "version": 1, "step": int(step),
        "history": [{k: (int(v) if k == "step" else float(v)) for k, v in h.items()} for h in history],
        "spec": adapter.spec.to_metadata(), "adapter": adapter_state_dict(adapter),
        "optimizer": optimizer.state_dict(),
        "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "config": json.dumps(asdict(config)) if config is not None else "{}",
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, adapter: P3SAdapter, optimizer: torch.optim.Optimizer | None,
                    generator: torch.Generator | None, scaler=None) -> tuple[int, list[dict], dict]:
    """Restore ``save_checkpoint`` state into the given objects; returns (step, history, config dict)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"P3S: --resume: checkpoint {path} not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"P3S: --resume: {path.name} could not be read ({type(exc).__name__}: {exc}): it is not "
                         "a P3S training checkpoint or it is truncated") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"P3S: --resume: {path.name} is not a P3S training checkpoint (to start from a finished "
                         "adapter .safetensors, train from scratch; checkpoints are the *.pt files)")
    spec = AdapterSpec.from_metadata(data["spec"], repr(path.name))
    if spec.to_metadata() != adapter.spec.to_metadata():
        raise ValueError(f"P3S: --resume: {path.name} was trained with a different adapter/model "
                         f"(family {spec.family}, rank {spec.rank}, {len(spec.layers)} layers) than this run "
                         f"(family {adapter.spec.family}, rank {adapter.spec.rank}, {len(adapter.spec.layers)} "
                         "layers): use the same --checkpoint, --rank and CLIP vision")
    device = next(adapter.parameters()).device
    load_adapter_state_dict(adapter, {k: v.to(device) for k, v in data["adapter"].items()},
                            source=f"checkpoint {path.name!r}")
    if optimizer is not None:
        optimizer.load_state_dict(data["optimizer"])
    rng = data.get("rng", {})
    if generator is not None and "generator" in rng:
        generator.set_state(rng["generator"])
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if scaler is not None and data.get("scaler"):
        scaler.load_state_dict(data["scaler"])
    return int(data["step"]), list(data["history"]), json.loads(data.get("config") or "{}")


def write_loss_curve(history: Sequence[dict], path: str | os.PathLike, title: str = "P3S adapter training") -> Path:
    """A PNG of the loss (and its moving average, and the ACL on a second scale) drawn with Pillow."""
    from PIL import Image, ImageDraw

    path = Path(path)
    W, H, L, R, T, B = 800, 420, 70, 70, 40, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((L, 12), title, fill="black")
    d.rectangle([L, T, W - R, H - B], outline="black")
    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history if math.isfinite(h["loss"])]
    if len(steps) >= 1 and losses:
        s0, s1 = min(steps), max(max(steps), min(steps) + 1)
        lo, hi = min(losses), max(losses)
        hi = hi if hi > lo else lo + 1e-8

        def xy(step, v, vlo=lo, vhi=hi):
            return (L + (step - s0) / (s1 - s0) * (W - L - R), H - B - (v - vlo) / (vhi - vlo) * (H - T - B))

        pts = [xy(h["step"], h["loss"]) for h in history if math.isfinite(h["loss"])]
        if len(pts) > 1:
            d.line(pts, fill=(160, 180, 230), width=1)
        k = max(1, len(history) // 20)
        avg = [sum(h["loss"] for h in history[max(0, i - k + 1): i + 1]) / len(history[max(0, i - k + 1): i + 1])
               for i in range(len(history))]
        apts = [xy(h["step"], a) for h, a in zip(history, avg) if math.isfinite(a)]
        if len(apts) > 1:
            d.line(apts, fill=(20, 60, 200), width=2)
        acl = [(h["step"], h.get("acl", float("nan"))) for h in history]
        acl = [(s, v) for s, v in acl if math.isfinite(v)]
        if len(acl) > 1:
            alo, ahi = min(v for _, v in acl), max(v for _, v in acl)
            ahi = ahi if ahi > alo else alo + 1e-12
            d.line([xy(s, v, alo, ahi) for s, v in acl], fill=(220, 90, 30), width=1)
            d.text((W - R + 4, T), f"{ahi:.3g}", fill=(220, 90, 30))
            d.text((W - R + 4, H - B - 10), f"{alo:.3g}", fill=(220, 90, 30))
        d.text((4, T), f"{hi:.4g}", fill="black")
        d.text((4, H - B - 10), f"{lo:.4g}", fill="black")
        d.text((L, H - B + 6), f"step {s0}", fill="black")
        d.text((W - R - 60, H - B + 6), f"step {s1}", fill="black")
        d.text((L + 150, H - B + 26), "loss (light), moving average (blue), ACL (orange, right scale)",
               fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


# ---- the loop ------------------------------------------------------------------------------------
@dataclass
class DistContext:
    """Data-parallel training across processes (torchrun): rank 0 logs and writes files."""
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistContext":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def broadcast_params(self, module: torch.nn.Module) -> None:
        if self.world_size > 1:
            import torch.distributed as dist
            for p in module.parameters():
                dist.broadcast(p.data, src=0)

    def average_grads(self, module: torch.nn.Module) -> None:
        """What DistributedDataParallel does for the adapter: all-reduce and average the gradients."""
        if self.world_size > 1:
            import torch.distributed as dist
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            if grads:
                flat = torch.cat([g.flatten() for g in grads])
                dist.all_reduce(flat)
                flat /= self.world_size
                off = 0
                for g in grads:
                    g.copy_(flat[off: off + g.numel()].view_as(g))
                    off += g.numel()

    def mean(self, values: dict[str, float], device) -> dict[str, float]:
        if self.world_size <= 1:
            return values
        import torch.distributed as dist
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}


@dataclass
class TrainResult:
    adapter: P3SAdapter
    history: list[dict]
    output: Path | None
    checkpoints: list[Path]
    seconds_per_step: float


def checkpoint_path(output: Path, step: int) -> Path:
    return output.with_name(f"{output.stem}.step{step:06d}.pt")


def train(backend, dataset, config: TrainConfig, output: str | os.PathLike | None, *,
          resume: str | os.PathLike | None = None, sample_fn: Callable[[P3SAdapter, int], Any] | None = None,
          dist: DistContext | None = None, progress: bool = True, stop_at: int | None = None,
          extra_metadata: dict | None = None) -> TrainResult:
    """Train an adapter on ``dataset`` with ``backend``; write checkpoints, samples, the adapter and the curve.

    ``stop_at``: stop after this step (for tests and interrupted runs: the final adapter is still written,
    the step counter in checkpoints stays that of the run). Resume continues the same step counter,
    history, optimizer and RNG state, so an interrupted and resumed run follows the uninterrupted one.
    """
    import time

    config.validate()
    dist = dist or DistContext()
    output = Path(output) if output is not None else None
    if output is not None and dist.is_main:
        output.parent.mkdir(parents=True, exist_ok=True)
    adapter = make_adapter(backend, config)
    params = [p for p in adapter.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    use_scaler = config.precision == "fp16" and backend.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if use_scaler else None
    generator = torch.Generator().manual_seed(config.seed * 1000003 + dist.rank)
    torch.manual_seed(config.seed)
    step, history = 0, []
    if resume is not None:
        step, history, _ = load_checkpoint(resume, adapter, optimizer, generator, scaler)
        if dist.rank > 0:  # every rank restored rank 0's data RNG: give each its own stream again
            generator.manual_seed(config.seed * 1000003 + dist.rank + 7919 * step)
        log.info("P3S: resumed from %s at step %d", resume, step)
    dist.broadcast_params(adapter)
    last = min(config.steps, stop_at) if stop_at is not None else config.steps
    checkpoints: list[Path] = []
    features_fn = getattr(backend, "selection_features", None)
    bar = None
    if progress and dist.is_main:
        from tqdm import tqdm
        bar = tqdm(total=config.steps, initial=step, desc="P3S train", dynamic_ncols=True)
    t0, timed, first = time.perf_counter(), 0, step
    adapter.train()
    while step < last:
        if step == first + 1:
            t0, timed = time.perf_counter(), 0  # time from the 2nd step on (the first warms caches up)
        idx = torch.randint(len(dataset), (config.batch_size,), generator=generator).tolist()
        batch = make_batch(dataset, idx, generator, template=config.prompt_template, features_fn=features_fn,
                           points_range=tuple(config.points_range), min_depth=config.min_depth, fill=config.fill)
        out = backend.forward(adapter, batch, generator, record_acl=config.acl_weight > 0)
        loss, parts = compute_loss(out, config.acl_weight)
        if not math.isfinite(parts["loss"]):
            raise ValueError(f"P3S: training diverged at step {step + 1} (loss {parts['loss']}): lower --lr, "
                             "or use --precision bf16/fp32 instead of fp16")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        dist.average_grads(adapter)
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        step += 1
        timed += 1
        parts = dist.mean(parts, backend.device)
        history.append({"step": step, **parts})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4f}", acl=f"{parts['acl']:.3g}")
        if output is not None and dist.is_main:
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoints.append(save_checkpoint(checkpoint_path(output, step), adapter, optimizer, step, history,
                                                   generator, config, scaler))
            if config.sample_every and sample_fn is not None and step % config.sample_every == 0:
                adapter.eval()
                with torch.no_grad():
                    sample_fn(adapter, step)
                adapter.train()
    if bar is not None:
        bar.close()
    secs = (time.perf_counter() - t0) / timed if timed else float("nan")
    adapter.eval()
    if output is not None and dist.is_main:
        meta = {"p3s_steps": step, "p3s_acl_weight": config.acl_weight, "p3s_lr": config.lr,
                "p3s_batch_size": config.batch_size, "p3s_seed": config.seed, **(extra_metadata or {})}
        if history:
            meta["p3s_final_loss"] = f"{history[-1]['loss']:.6g}"
        save_adapter(adapter, output, extra_metadata=meta)
        write_loss_curve(history, output.with_suffix(".loss.png"))
    return TrainResult(adapter, history, output, checkpoints, secs)


@torch.no_grad()
def evaluate(backend, adapter: P3SAdapter, dataset, config: TrainConfig, batches: int = 4,
             seed: int = 12345) -> dict[str, float]:
    """Mean diffusion loss and ACL (cross-attention deviation) on ``batches`` fixed held-out batches."""
    g = torch.Generator().manual_seed(seed)
    features_fn = getattr(backend, "selection_features", None)
    diffs, acls = [], []
    was = adapter.training
    adapter.eval()
    for _ in range(batches):
        idx = torch.randint(len(dataset), (config.batch_size,), generator=g).tolist()
        batch = make_batch(dataset, idx, g, template=config.prompt_template, features_fn=features_fn,
                           points_range=tuple(config.points_range), min_depth=config.min_depth, fill=config.fill)
        out = backend.forward(adapter, batch, g, record_acl=True)
        diffs.append(float(diffusion_loss(out.pred, out.target)))
        acls.append(float(attention_consistency_loss(out.maps_with, out.maps_without)))
    adapter.train(was)
    return {"diffusion": sum(diffs) / len(diffs), "acl": sum(acls) / len(acls)}

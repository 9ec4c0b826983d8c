"""The training loop: AdamW over the adapter only, L = L_diffusion + lambda * ACL, checkpoints and resume.

The frozen diffusion model is a *backend* (duck-typed, see ``Backend``; the ComfyUI one is
nodes/train/backend.py), so this module stays free of ComfyUI.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from ..adapter import AdapterSpec, P3SAdapter, save_adapter
from ..losses import attention_consistency_loss, diffusion_loss, subject_pixel_weights, total_loss
from .batches import Batch, make_batch
from .checkpoints import checkpoint_path, load_checkpoint, save_checkpoint
from .config import TrainConfig, lr_factor
from .distributed import DistContext
from .loss_curve import write_loss_curve

log = logging.getLogger("P3S")

GAIN_LR_SCALE = 10.0  # the read gain's learning rate over --lr (see _Stepper)


@dataclass
class ForwardOutput:
    pred: torch.Tensor                     # predicted noise (eps) [B, C, h, w], with grad into the adapter
    target: torch.Tensor                   # the noise that was added
    maps_with: list[torch.Tensor] = field(default_factory=list)     # attn2 probs, injection on
    maps_without: list[torch.Tensor] = field(default_factory=list)  # attn2 probs, no injection (no grad)
    sigma: torch.Tensor | None = None      # [B] noise level of each sample (for the loss weighting)
    subject: torch.Tensor | None = None    # [B, h, w] the target's subject mask at pred's size (0..1)


class Backend(Protocol):
    """What ``train`` needs from the frozen diffusion model."""
    family: str
    layers: list[tuple[str, int]]
    ctx_dim: int
    clip_width: int
    device: torch.device

    def selection_features(self, image: torch.Tensor) -> torch.Tensor | None: ...
    def forward(self, adapter: P3SAdapter, batch: Batch, generator: torch.Generator,
                record_acl: bool) -> ForwardOutput: ...


def noise_weights(sigma: torch.Tensor | None, weighting: str) -> torch.Tensor | None:
    """Per-sample weights of the eps MSE: eps 1, v (1 + sigma^2), x0 sigma^2 (None: unweighted)."""
    if weighting == "eps":
        return None
    if sigma is None:
        raise ValueError(f"P3S: loss weighting {weighting!r} needs the noise level of each sample; this "
                         "backend's forward does not report it (use --loss-weighting eps)")
    s2 = sigma.detach().float().flatten() ** 2
    return 1.0 + s2 if weighting == "v" else s2


def compute_loss(out: ForwardOutput, acl_weight: float, weighting: str = "eps", subject_weight: float = 0.0
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_diffusion (weighted over noise levels, and ``1 + subject_weight`` on the subject's pixels) +
    lambda * ACL, and the parts as floats for logging (acl NaN when not recorded)."""
    pixel = None
    if subject_weight > 0:
        if out.subject is None:
            raise ValueError("P3S: --subject-loss-weight needs the subject's mask in every target "
                             "(masks/<stem>.png); this batch has a target without one")
        pixel = subject_pixel_weights(out.subject, subject_weight)
    diff = diffusion_loss(out.pred, out.target, noise_weights(out.sigma, weighting), pixel)
    acl = attention_consistency_loss(out.maps_with, out.maps_without) if out.maps_with else None
    loss = total_loss(diff, acl, acl_weight)
    return loss, {"loss": float(loss.detach()), "diffusion": float(diff.detach()),
                  "acl": float(acl.detach()) if acl is not None else float("nan")}


def make_adapter(backend, config: TrainConfig) -> P3SAdapter:
    """A fresh (zero-effect) adapter for the backend's model, fp32 on its device."""
    with torch.random.fork_rng(devices=[]):  # adapter init depends on the seed only, not on what ran before
        torch.manual_seed(config.seed)
        spec = AdapterSpec(family=backend.family, rank=config.rank,
                           alpha=float(config.alpha if config.alpha is not None else config.rank),
                           clip_width=backend.clip_width, ctx_dim=backend.ctx_dim, layers=backend.layers,
                           read_rank=int(config.read_rank), read_gain=bool(int(config.read_gain)),
                           subject_attn=int(config.subject_attn))
        adapter = P3SAdapter(spec)
    return adapter.to(device=backend.device, dtype=torch.float32)


def draw_batch(backend, dataset, config: TrainConfig, generator: torch.Generator) -> Batch:
    """``config.batch_size`` random samples with fresh clicks and their on-the-fly references."""
    idx = torch.randint(len(dataset), (config.batch_size,), generator=generator).tolist()
    return make_batch(dataset, idx, generator, template=config.prompt_template,
                      features_fn=getattr(backend, "selection_features", None),
                      points_range=tuple(config.points_range), min_depth=config.min_depth, fill=config.fill)


@dataclass
class TrainResult:
    adapter: P3SAdapter
    history: list[dict]
    output: Path | None
    checkpoints: list[Path]
    seconds_per_step: float


class _Stepper:
    """One optimizer step: backward (GradScaler for fp16 on CUDA), gradient averaging, clipping, AdamW."""

    def __init__(self, adapter: P3SAdapter, config: TrainConfig, device: torch.device, dist: DistContext):
        self.adapter, self.config, self.dist = adapter, config, dist
        named = [(n, p) for n, p in adapter.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        # the read gain (a few numbers) at the deltas' lr could move at most lr per step: 10x lets 1000
        # steps reach any weight up to e^10; one group only when there is no gain, as before (resume)
        groups = [{"params": [p for n, p in named if n != "read_gain"]}]
        if any(n == "read_gain" for n, _ in named):
            groups.append({"params": [adapter.read_gain], "lr": config.lr * GAIN_LR_SCALE, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]  # before a resume overwrites them
        use_scaler = config.precision == "fp16" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=True) if use_scaler else None

    def step(self, loss: torch.Tensor, step: int) -> None:
        """Optimizer step number ``step`` (0-based: its learning rate follows --lr-schedule)."""
        factor = lr_factor(self.config, step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        self.dist.average_grads(self.adapter)
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()


def _finish(adapter: P3SAdapter, history: list[dict], output: Path, step: int, config: TrainConfig,
            extra_metadata: dict | None) -> None:
    meta = {"p3s_steps": step, "p3s_acl_weight": config.acl_weight, "p3s_lr": config.lr,
            "p3s_batch_size": config.batch_size, "p3s_seed": config.seed,
            "p3s_reference_mode": config.reference_mode, "p3s_loss_weighting": config.loss_weighting,
            "p3s_subject_loss_weight": config.subject_loss_weight, "p3s_lr_schedule": config.lr_schedule,
            "p3s_warmup_steps": config.warmup_steps,
            **(extra_metadata or {})}
    if history:
        meta["p3s_final_loss"] = f"{history[-1]['loss']:.6g}"
    save_adapter(adapter, output, extra_metadata=meta)
    write_loss_curve(history, output.with_suffix(".loss.png"))


def _start(adapter: P3SAdapter, stepper: _Stepper, config: TrainConfig, dist: DistContext,
           resume: str | os.PathLike | None) -> tuple[torch.Generator, int, list[dict]]:
    """The data generator, the step and the history: fresh (seeded), or restored from ``resume``."""
    generator = torch.Generator().manual_seed(config.seed * 1000003 + dist.rank)
    torch.manual_seed(config.seed)
    step, history = 0, []
    if resume is not None:
        step, history, _ = load_checkpoint(resume, adapter, stepper.optimizer, generator, stepper.scaler)
        if dist.rank > 0:  # every rank restored rank 0's data RNG: give each its own stream again
            generator.manual_seed(config.seed * 1000003 + dist.rank + 7919 * step)
        log.info("P3S: resumed from %s at step %d", resume, step)
    dist.broadcast_params(adapter)
    return generator, step, history


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT / SIGTERM after a whole step; ``checkpoint`` holds everything up to ``step``."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"P3S: training interrupted after step {step}"
                         + (f"; resume with --resume {checkpoint}" if checkpoint else ""))
        self.step, self.checkpoint = step, checkpoint


class _StopRequests:
    """SIGINT / SIGTERM while training asks to stop after the current step (and save); a second SIGINT
    aborts at once. Handlers are installed only in the main thread and restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "_StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        log.warning("P3S: %s: stopping after this step and saving a checkpoint (Ctrl-C again: stop at once, "
                    "unsaved)", self.requested)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _train_step(backend, adapter: P3SAdapter, stepper: _Stepper, dataset, config: TrainConfig,
                generator: torch.Generator, step: int, stop: _StopRequests) -> dict[str, float]:
    """Draw a batch, forward, L = L_diffusion + lambda * ACL, optimizer step; the loss parts (mean over ranks)
    and ``stop`` > 0 when any process was asked to stop (one collective for both)."""
    out = backend.forward(adapter, draw_batch(backend, dataset, config, generator), generator,
                          record_acl=config.acl_weight > 0)
    loss, parts = compute_loss(out, config.acl_weight, config.loss_weighting, config.subject_loss_weight)
    if not math.isfinite(parts["loss"]):
        raise ValueError(f"P3S: training diverged at step {step + 1} (loss {parts['loss']}): lower --lr, "
                         "or use --precision bf16/fp32 instead of fp16")
    stepper.step(loss, step)
    return stepper.dist.mean({**parts, "stop": float(stop.requested is not None)}, backend.device)


def _check_target_masks(dataset) -> None:
    """--subject-loss-weight reads each target's subject mask: refuse, before step 1, a dataset that lacks one."""
    missing = dataset.targets_without_masks() if hasattr(dataset, "targets_without_masks") else []
    if missing:
        shown = ", ".join(f"masks/{stem}.png" for stem in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"P3S: --subject-loss-weight > 0 needs the subject's mask in every target, and "
                         f"{len(missing)} paired image(s) have none ({shown}): add those masks (white = the "
                         "subject in images/<stem>), or train with --subject-loss-weight 0")


def _report(bar, parts: dict[str, float], step: int, total: int, quiet: bool) -> None:
    """The progress bar's numbers; without a bar, a log line at every 1 % of the run (none when ``quiet``)."""
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{parts['loss']:.4f}", acl=f"{parts['acl']:.3g}")
    elif not quiet and (step % max(1, total // 100) == 0 or step == total):
        log.info("P3S: step %d/%d loss %.5f acl %.3g", step, total, parts["loss"], parts["acl"])


def _interrupted(bar, history: list[dict], output: Path | None, checkpoint: Path | None) -> None:
    """After a stop request: the loss curve so far, one log line with the way back, then TrainingInterrupted."""
    if bar is not None:
        bar.close()
    step = history[-1]["step"]
    if output is not None:
        write_loss_curve(history, output.with_suffix(".loss.png"))
        log.warning("P3S: training stopped after step %d; saved %s. Continue with --resume %s", step,
                    checkpoint, checkpoint)
    raise TrainingInterrupted(step, checkpoint)


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc="P3S train", dynamic_ncols=True)


def train(backend, dataset, config: TrainConfig, output: str | os.PathLike | None, *,
          resume: str | os.PathLike | None = None, sample_fn: Callable[[P3SAdapter, int], Any] | None = None,
          dist: DistContext | None = None, progress: bool = True, stop_at: int | None = None,
          extra_metadata: dict | None = None) -> TrainResult:
    """Train an adapter on ``dataset`` with ``backend``; write checkpoints, samples, the adapter and the curve.

    ``stop_at``: stop after this step (for short and interrupted runs: the final adapter is still written,
    the step counter in checkpoints stays that of the run). Resume continues the same step counter,
    history, optimizer and RNG state, so an interrupted and resumed run follows the uninterrupted one.
    SIGINT / SIGTERM stop the run after the current step: a checkpoint of that step is written and
    ``TrainingInterrupted`` is raised (the command line turns it into exit status 130).
    """
    config.validate()
    if config.subject_loss_weight > 0:
        _check_target_masks(dataset)
    dist = dist or DistContext()
    output = Path(output) if output is not None else None
    writes = output is not None and dist.is_main
    if writes:
        output.parent.mkdir(parents=True, exist_ok=True)
    adapter = make_adapter(backend, config)
    stepper = _Stepper(adapter, config, backend.device, dist)
    generator, step, history = _start(adapter, stepper, config, dist, resume)
    last = min(config.steps, stop_at) if stop_at is not None else config.steps
    checkpoints: list[Path] = []
    bar = _progress_bar(progress and dist.is_main, config.steps, step)
    t0, timed, first = time.perf_counter(), 0, step
    adapter.train()
    with _StopRequests() as stop:
        while step < last:
            if step == first + 1:
                t0, timed = time.perf_counter(), 0  # time from the 2nd step on (the first warms caches up)
            parts = _train_step(backend, adapter, stepper, dataset, config, generator, step, stop)
            stopping = parts.pop("stop") > 0
            step, timed = step + 1, timed + 1
            history.append({"step": step, **parts})
            _report(bar, parts, step, config.steps, quiet=not dist.is_main)
            if writes and (stopping or (config.checkpoint_every and step % config.checkpoint_every == 0)):
                checkpoints.append(save_checkpoint(checkpoint_path(output, step), adapter, stepper.optimizer, step,
                                                   history, generator, config, stepper.scaler))
            if stopping:
                _interrupted(bar, history, output if writes else None, checkpoints[-1] if writes else None)
            if writes and config.sample_every and sample_fn is not None and step % config.sample_every == 0:
                adapter.eval()
                with torch.no_grad():
                    sample_fn(adapter, step)
                adapter.train()
    if bar is not None:
        bar.close()
    secs = (time.perf_counter() - t0) / timed if timed else float("nan")
    adapter.eval()
    if writes:
        _finish(adapter, history, output, step, config, extra_metadata)
    return TrainResult(adapter, history, output, checkpoints, secs)


@torch.no_grad()
def evaluate(backend, adapter: P3SAdapter, dataset, config: TrainConfig, batches: int = 4,
             seed: int = 12345) -> dict[str, float]:
    """Mean diffusion loss and ACL (cross-attention deviation) on ``batches`` fixed held-out batches."""
    g = torch.Generator().manual_seed(seed)
    diffs, acls = [], []
    was = adapter.training
    adapter.eval()
    for _ in range(batches):
        out = backend.forward(adapter, draw_batch(backend, dataset, config, g), g, record_acl=True)
        diffs.append(float(diffusion_loss(out.pred, out.target)))
        acls.append(float(attention_consistency_loss(out.maps_with, out.maps_without)))
    adapter.train(was)
    return {"diffusion": sum(diffs) / len(diffs), "acl": sum(acls) / len(acls)}

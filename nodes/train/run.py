"""One training run from start to end: load the models, build the backend and the dataset, train."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ...p3s_core.training import DistContext, SubjectDataset, TrainConfig, TrainResult, train
from ..models import model_family
from .backend import ComfyBackend
from .loading import load_models
from .samples import make_sampler

log = logging.getLogger("P3S")


@dataclass
class TrainJob:
    """What scripts/train_adapter.py asks for (see docs/training.md for every option)."""

    checkpoint: str                     # a path, or a name in models/checkpoints
    clip_vision: str                    # a path, or a name in models/clip_vision
    data: str                           # the dataset folder
    output: str                         # the adapter to write (.safetensors)
    config: TrainConfig = field(default_factory=TrainConfig)
    resolution: int | None = None       # training side; default 512 (SD1.5) / 1024 (SDXL)
    acl_layers: str = "all"
    selection_features: str = "clip"    # features of the on-the-fly selection: clip | builtin
    sample_steps: int = 20
    sample_prompt: str | None = None
    resume: str | None = None
    progress: bool = True


def run_training(job: TrainJob, dist: DistContext | None = None) -> TrainResult:
    """Everything after ComfyUI is importable: load, build the backend, train, log where the files went."""
    output = Path(job.output)
    if output.suffix.lower() != ".safetensors":
        raise ValueError(f"P3S: --output {output} must end in .safetensors")
    config = job.config
    config.validate()
    # Every dataset file is read before step 1; with a known resolution, before the models load too.
    dataset = SubjectDataset(job.data, job.resolution) if job.resolution else None
    model, clip, vae, cv = load_models(job.checkpoint, job.clip_vision, config.precision)
    resolution = job.resolution or (1024 if model_family(model) == "sdxl" else 512)
    if dataset is None:
        dataset = SubjectDataset(job.data, resolution)
    backend = ComfyBackend(model, clip, vae, cv, resolution=resolution, precision=config.precision,
                           acl_layers=job.acl_layers, selection_features=job.selection_features,
                           reference_mode=config.reference_mode)
    try:
        sampler = None
        if config.sample_every and (dist is None or dist.is_main):
            sampler = make_sampler(backend, dataset, config, output.with_name(output.stem + "_samples"),
                                   steps=job.sample_steps, prompt=job.sample_prompt, seed=config.seed)
        res = train(backend, dataset, config, output, resume=job.resume, sample_fn=sampler, dist=dist,
                    progress=job.progress, extra_metadata={"p3s_base_checkpoint": Path(job.checkpoint).name,
                                                           "p3s_clip_vision": Path(job.clip_vision).name})
    finally:
        backend.close()
    if dist is None or dist.is_main:
        last = res.history[-1] if res.history else {"step": 0, "loss": float("nan")}
        log.info("P3S: wrote %s (%d steps, final loss %.5f, %.3f s/step); loss curve %s", output, last["step"],
                 last["loss"], res.seconds_per_step, output.with_suffix(".loss.png"))
    return res

"""The ComfyUI side of adapter training (the loop, dataset and losses are ``p3s_core.training``).

- ``loading``: the frozen checkpoint and CLIP vision model through ComfyUI's own loaders;
- ``backend``: ``ComfyBackend``, the frozen model's forward pass with the pack's own P3S patch and the
  cross-attention recorders of the Attention Consistency Loss;
- ``samples``: sample images during training (subject reference | training-free | adapter);
- ``run``: ``TrainJob`` and ``run_training``, what scripts/train_adapter.py calls.
Not a node family: nothing here is registered as a node; it is imported by the trainer only.
"""
from __future__ import annotations

from ...p3s_core.training import DistContext, TrainConfig, config_fields
from .backend import ComfyBackend, CrossAttentionRecorder
from .loading import load_models, resolve_model_path
from .run import TrainJob, run_training
from .samples import make_sampler

__all__ = ["ComfyBackend", "CrossAttentionRecorder", "load_models", "resolve_model_path", "TrainJob",
           "run_training", "make_sampler", "TrainConfig", "DistContext", "config_fields"]

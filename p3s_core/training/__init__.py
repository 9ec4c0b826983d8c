"""Training a P3S adapter with the Attention Consistency Loss (plain torch; never imports comfy).

One module per concern; everything is re-exported here (``p3s_core.training.train`` etc.):

- ``dataset``: ``SubjectDataset``, a folder of images + captions + subject masks or clicks, optionally
  paired with a different reference photo per image (docs/training.md);
- ``batches``: ``interior_points`` (clicks like a user's), ``prepare_reference`` (the RNGR selection on
  them, on the fly, so the adapter trains on the selections users get) and ``make_batch``;
- ``config``: ``TrainConfig``, the settings and the command line's defaults;
- ``loop``: ``train`` (AdamW over the adapter only, L = L_diffusion + lambda * ACL), ``evaluate`` and the
  ``Backend`` protocol the frozen model implements (the ComfyUI one is nodes/train/backend.py);
- ``checkpoints``: resumable training state; ``loss_curve``: the PNG; ``distributed``: torchrun.

Choices the paper leaves open (ours, easy to change): one timestep per batch (the reference pass is
noised to the same sigma as the batch, as at sampling time), eps-space MSE, AdamW, clicks sampled
1..3 per step from the mask interior, blur fill, ACL over every cross-attention layer by default.
"""
from __future__ import annotations

from .batches import Batch, Reference, interior_points, make_batch, prepare_reference
from .checkpoints import CHECKPOINT_FORMAT, checkpoint_path, load_checkpoint, save_checkpoint
from .config import PRECISIONS, TRAIN_FILLS, TrainConfig, config_fields
from .dataset import IMAGE_EXTS, SubjectDataset, SubjectView, TrainSample
from .distributed import DistContext
from .loop import (Backend, ForwardOutput, TrainingInterrupted, TrainResult, compute_loss, draw_batch, evaluate,
                   make_adapter, train)
from .loss_curve import write_loss_curve

__all__ = ["IMAGE_EXTS", "TrainSample", "SubjectView", "SubjectDataset", "interior_points", "Reference",
           "prepare_reference", "Batch", "make_batch", "draw_batch", "ForwardOutput", "Backend", "compute_loss",
           "TrainConfig", "PRECISIONS", "TRAIN_FILLS", "config_fields", "TrainResult", "TrainingInterrupted",
           "DistContext", "make_adapter", "save_checkpoint", "load_checkpoint", "checkpoint_path", "write_loss_curve",
           "train", "evaluate", "CHECKPOINT_FORMAT"]

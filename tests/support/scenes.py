"""Synthetic reference scenes with known instance masks (test data): the generator lives in p3s_host."""
from __future__ import annotations

import torch

from p3s_host.scenes import save_mask, save_png, two_subjects, write_dataset

__all__ = ["two_subjects", "save_png", "save_mask", "write_dataset", "iou"]


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum()) / max(1.0, float((a | b).sum()))

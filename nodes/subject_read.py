"""The attn2 side of a P3S patch whose adapter has a subject cross-attention (p3s_core/subject_attention.py).

Two callables per patch, because ComfyUI gives a block's cross-attention input and its output to two
different patch lists: ``attn2_patch`` sees ``n`` (the normed hidden states the block's cross-attention
reads) and computes the subject read (``P3SPatch.subject_delta``); ``attn2_output_patch`` adds it to the
block's cross-attention output. The delta travels between them in the block's ``extra_options``, a dict
made fresh for every block call, so nothing outlives the block.
"""
from __future__ import annotations

DELTA_PREFIX = "p3s_subject_read_"  # extra_options key of one patch's pending delta


class SubjectReadIn:
    """attn2_patch: the subject read of this block, kept for ``SubjectReadOut``."""

    def __init__(self, patch) -> None:
        self.patch = patch

    def __deepcopy__(self, memo):
        return self  # shared like the P3SPatch it belongs to (model_options are deep-copied on clone)

    def __call__(self, n, context, value, extra_options):
        delta = self.patch.subject_delta(n, extra_options)
        if delta is not None:
            extra_options[DELTA_PREFIX + self.patch.id] = delta
        return n, context, value


class SubjectReadOut:
    """attn2_output_patch: adds the pending subject read to the block's cross-attention output."""

    def __init__(self, patch) -> None:
        self.patch = patch

    def __deepcopy__(self, memo):
        return self

    def __call__(self, n, extra_options):
        delta = extra_options.pop(DELTA_PREFIX + self.patch.id, None)
        return n if delta is None else n + delta

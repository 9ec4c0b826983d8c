"""The read of appended subject tokens: per-call segment bookkeeping and the attention override.

P3S's attn1 patch (nodes/patch.py) appends subject tokens to a block's self-attention keys/values and
records where they sit, which rows read them and their weight, as an ``AppendedSegment`` in the model
call's ``AppendedSegments`` (``transformer_options[SEGMENTS_KEY]``, made fresh for every model call).
The attention override, installed per model call in front of any override already there, takes the
segments of its block and runs ``injection.subject_read`` (fused where a kernel allows, else biased);
every other attention call goes on to the previous override or to ComfyUI's own function. Nothing here
is global: two samplings never share segments.

A block whose self-attention another pack *replaces* (an attn1 replace: Self-Attention Guidance,
Perturbed-Attention Guidance) never reaches the override; for the read pass its replace is wrapped so it
sees only the image's own tokens (the appended ones are invisible to it, as SAG's attention map and
PAG's ``return v`` need) and the appended tokens are merged into its output afterwards
(``p3s_core.split_attention``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..p3s_core import injection
from ..p3s_core.split_attention import merge_appended, merge_groups

SEGMENTS_KEY = "p3s_segments"  # transformer_options: the AppendedSegments of the current model call


@dataclass
class AppendedSegment:
    """Tokens appended to one block's keys/values, waiting for that block's attention call."""

    key: str                    # layer key, 'input.1.0'
    queries: int                # the block's own token count (the attention call's query length)
    appended: injection.Appended

    def belongs_to(self, key: str, q: torch.Tensor, k: torch.Tensor) -> bool:
        """The attention call (``q``, ``k``) is the self-attention these tokens were appended to.

        The query count is not compared: a patch after P3S may merge the queries (ToMe) and not the keys.
        """
        a = self.appended
        return self.key == key and a.rows.shape[0] == q.shape[0] and a.offset + a.valid.shape[1] <= k.shape[1]


class AppendedSegments:
    """The segments appended in one model call, each waiting for the attention call of its block."""

    def __init__(self) -> None:
        self._items: list[AppendedSegment] = []

    def add(self, segment: AppendedSegment) -> None:
        # Segments of another block were never consumed (that block's attention was replaced by
        # another pack's attn1 replace): they can no longer apply, drop them.
        self._items = [s for s in self._items if s.key == segment.key]
        self._items.append(segment)

    def take(self, key: str, q: torch.Tensor, k: torch.Tensor) -> list[AppendedSegment]:
        """Remove and return the segments of this attention call (several P3S nodes may append to it)."""
        mine = [s for s in self._items if s.belongs_to(key, q, k)]
        self._items = [s for s in self._items if not any(s is m for m in mine)]
        return mine

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _layer_key(transformer_options: dict) -> str | None:
    block = transformer_options.get("block")
    return injection.layer_key(block, transformer_options.get("block_index", 0)) if block else None


def attention_override(previous):
    """An ``optimized_attention_override`` that reads P3S's appended tokens with their bias."""
    def override(func, q, k, v, heads, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        segments = to.get(SEGMENTS_KEY)
        key = _layer_key(to)
        mine = []
        if segments is not None and len(segments) and key and not kwargs.get("skip_reshape"):
            mine = segments.take(key, q, k)
        if mine:
            return injection.subject_read(q, k, v, heads, [s.appended for s in mine])
        if previous is not None:
            return previous(func, q, k, v, heads, *args, **kwargs)
        return func(q, k, v, heads, *args, **kwargs)
    override.p3s = True
    return override


def own_tokens_only(replace):
    """Another pack's attn1 replace, called with the image's own keys only; P3S's appended keys are merged
    into its output with their bias (exactly P3S's read when the replace computes plain attention)."""
    if getattr(replace, "p3s", False):
        return replace

    def wrapped(q, k, v, extra_options, *args, **kwargs):
        segments = extra_options.get(SEGMENTS_KEY)
        key = _layer_key(extra_options)
        mine = segments.take(key, q, k) if segments is not None and len(segments) and key else []
        if not mine:
            return replace(q, k, v, extra_options, *args, **kwargs)
        parts = [s.appended for s in mine]
        own = min(p.offset for p in parts)
        out_own = replace(q, k[:, :own], v[:, :own], extra_options, *args, **kwargs)
        if all(p.query is None for p in parts):
            # keys appended after P3S's by other packs count as plain keys (bias 0), as in the override
            bias = torch.zeros(q.shape[0], k.shape[1] - own, dtype=torch.float32, device=q.device)
            for p in parts:
                bias[:, p.offset - own: p.offset - own + p.valid.shape[1]] = p.bias().to(q.device)
            return merge_appended(q, k[:, :own], out_own, k[:, own:], v[:, own:], extra_options["n_heads"], bias)
        # an adapter's read queries: each part is a group of its own, read with its queries
        groups, end = [], own
        for p in sorted(parts, key=lambda p: p.offset):
            if p.offset > end:  # keys another pack appended between P3S's: plain keys, plain queries
                groups.append((q, k[:, end:p.offset], v[:, end:p.offset],
                               torch.zeros(q.shape[0], p.offset - end, device=q.device)))
            span = slice(p.offset, p.offset + p.valid.shape[1])
            groups.append((p.query(q) if p.query is not None else q, k[:, span], v[:, span], p.bias().to(q.device)))
            end = span.stop
        if end < k.shape[1]:
            groups.append((q, k[:, end:], v[:, end:], torch.zeros(q.shape[0], k.shape[1] - end, device=q.device)))
        return merge_groups(q, k[:, :own], out_own, groups, extra_options["n_heads"])
    wrapped.p3s = True
    wrapped.wraps = replace
    return wrapped


def begin_read(transformer_options: dict) -> bool:
    """Make ``transformer_options`` (a per-call copy) read appended tokens: segments, the override, and other
    packs' attn1 replaces wrapped by ``own_tokens_only``.

    Returns True when this call created the segments (the caller clears them when the call ends);
    nested P3S patches share the outermost one's segments, override and wrapped replaces.
    """
    created = SEGMENTS_KEY not in transformer_options
    if created:
        transformer_options[SEGMENTS_KEY] = AppendedSegments()
    previous = transformer_options.get("optimized_attention_override")
    if not getattr(previous, "p3s", False):
        transformer_options["optimized_attention_override"] = attention_override(previous)
    replaces = transformer_options.get("patches_replace") or {}
    if replaces.get("attn1"):  # a new dict: the MODEL's own options are never modified
        attn1 = {block: own_tokens_only(f) for block, f in replaces["attn1"].items()}
        transformer_options["patches_replace"] = {**replaces, "attn1": attn1}
    return created

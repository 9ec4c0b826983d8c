"""The adapter's torch modules: low-rank deltas, the subject resampler and ``P3SAdapter`` (see
``p3s_core.adapter`` for what each part does; ``p3s_core.adapter_file`` reads and writes the files)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import subject_attention
from .adapter_spec import AdapterSpec, check_compatible, width_name

class LowRankDelta(nn.Module):
    """``x -> up(down(x)) * alpha / rank``; ``up`` starts at zero so the delta starts at zero."""

    def __init__(self, dim: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.normal_(self.down.weight, std=1.0 / rank)
        nn.init.zeros_(self.up.weight)
        self.scale = float(alpha) / float(rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x)) * self.scale


def _resampler_heads(ctx_dim: int) -> int:
    # Derived from ctx_dim (not stored) so the metadata stays the fixed key set: 64-wide heads
    # like the U-Net's own attention, one head for tiny test widths.
    return ctx_dim // 64 if ctx_dim % 64 == 0 else 1


class SubjectResampler(nn.Module):
    """Learned queries cross-attending to projected subject tokens (padded tokens masked out)."""

    def __init__(self, clip_width: int, ctx_dim: int, num_queries: int = 77) -> None:
        super().__init__()
        self.heads = _resampler_heads(ctx_dim)
        self.queries = nn.Parameter(torch.randn(num_queries, ctx_dim) * ctx_dim ** -0.5)
        self.in_norm = nn.LayerNorm(clip_width)
        self.in_proj = nn.Linear(clip_width, ctx_dim)
        self.q_norm = nn.LayerNorm(ctx_dim)
        self.to_q = nn.Linear(ctx_dim, ctx_dim, bias=False)
        self.to_k = nn.Linear(ctx_dim, ctx_dim, bias=False)
        self.to_v = nn.Linear(ctx_dim, ctx_dim, bias=False)
        self.to_out = nn.Linear(ctx_dim, ctx_dim)
        self.out_norm = nn.LayerNorm(ctx_dim)
        self.out_proj = nn.Linear(ctx_dim, ctx_dim)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, length: int) -> torch.Tensor:
        """tokens [B, N, clip_width], valid [B, N] bool (each row has >= 1 True) -> [B, length, ctx_dim]."""
        b = tokens.shape[0]
        reps = -(-length // self.queries.shape[0])
        # Long prompts are 77-token chunks concatenated: tile the queries, then crop.
        q0 = self.queries.repeat(reps, 1)[:length].unsqueeze(0).expand(b, -1, -1)
        kv = self.in_proj(self.in_norm(tokens))
        h, d = self.heads, q0.shape[-1] // self.heads
        q = self.to_q(self.q_norm(q0)).view(b, length, h, d).transpose(1, 2)
        k = self.to_k(kv).view(b, -1, h, d).transpose(1, 2)
        v = self.to_v(kv).view(b, -1, h, d).transpose(1, 2)
        mask = valid[:, None, None, :]  # True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = q0 + self.to_out(out.transpose(1, 2).reshape(b, length, h * d))
        return self.out_proj(self.out_norm(out))


def _nested(root: nn.ModuleDict, layers: Sequence[tuple[str, int]], make) -> dict[str, nn.Module]:
    """One ``make(dim)`` per layer, at ``root[part][...][leaf]`` for the key 'part.….leaf'; key -> module."""
    made: dict[str, nn.Module] = {}
    for key, dim in layers:
        node = root
        *parents, leaf = key.split(".")
        for part in parents:
            if part not in node:
                node[part] = nn.ModuleDict()
            node = node[part]
        node[leaf] = made.setdefault(key, make(dim))
    return made


def _nested_deltas(root: nn.ModuleDict, layers: Sequence[tuple[str, int]], rank: int, alpha: float
                   ) -> dict[str, LowRankDelta]:
    """One LowRankDelta per layer (see ``_nested``)."""
    return _nested(root, layers, lambda dim: LowRankDelta(dim, rank, alpha))


class P3SAdapter(nn.Module):
    """Reference-pass deltas (``apply_delta``) and subject context (``reference_context``)."""

    def __init__(self, spec: AdapterSpec) -> None:
        super().__init__()
        self.spec = spec
        self.source = "<in memory>"  # file name, set by load_adapter, used in messages
        # Nested ModuleDicts so state_dict names are exactly the file names: lora.input.1.0.down.weight
        self.lora = nn.ModuleDict()
        self._deltas = _nested_deltas(self.lora, spec.layers, spec.rank, spec.alpha)
        # read deltas: nested the same way, under ``read.`` (absent when read_rank is 0); scale 1
        self.read = nn.ModuleDict()
        self._reads = _nested_deltas(self.read, spec.layers, spec.read_rank, spec.read_rank) if spec.read_rank else {}
        self.proj = SubjectResampler(spec.clip_width, spec.ctx_dim, spec.num_queries)
        self.gate = nn.Parameter(torch.zeros(()))
        # the subject cross-attention of the denoising pass, nested under ``xattn.`` (absent when 0)
        self.xattn = nn.ModuleDict()
        self._xattn = _nested(self.xattn, spec.layers, lambda dim: subject_attention.SubjectCrossAttention(
            dim, spec.ctx_dim, spec.subject_attn)) if spec.subject_attn else {}
        if spec.read_gain:  # one log-gain per layer, in spec.layers order (absent: the file has no such tensor)
            self.read_gain = nn.Parameter(torch.zeros(len(spec.layers)))
            self._gain_index = {k: i for i, (k, _) in enumerate(spec.layers)}

    @property
    def layer_keys(self) -> list[str]:
        return [k for k, _ in self.spec.layers]

    def has_layer(self, layer_key: str) -> bool:
        return layer_key in self._deltas

    def apply_delta(self, layer_key: str, n: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Reference pass self-attention input ``n`` [B, T, dim] -> ``n + scale * lora(n)``."""
        delta = self._deltas.get(layer_key)
        if delta is None:
            return n
        dim = delta.down.in_features
        if n.shape[-1] != dim:
            raise ValueError(f"P3S: adapter {self.source!r} layer {layer_key!r} expects width {dim}, "
                             f"got {n.shape[-1]}: the adapter does not match this MODEL")
        w = delta.down.weight
        return n + (delta(n.to(w.dtype)) * scale).to(n.dtype)

    def _check_width(self, kind: str, layer_key: str, want: int, got: int) -> None:
        if got != want:
            raise ValueError(f"P3S: adapter {self.source!r} {kind} {layer_key!r} expects width {want}, got {got}: "
                             "the adapter does not match this MODEL")

    def has_read(self, layer_key: str) -> bool:
        return layer_key in self._reads

    def read_query(self, layer_key: str, q: torch.Tensor) -> torch.Tensor:
        """Denoising pass queries ``q`` [B, T, inner] -> the queries its subject-token read uses."""
        delta = self._reads.get(layer_key)
        if delta is None:
            return q
        self._check_width("read layer", layer_key, delta.down.in_features, q.shape[-1])
        return q + delta(q.to(delta.down.weight.dtype)).to(q.dtype)

    def read_log_gain(self, layer_key: str) -> torch.Tensor | None:
        """The learned log-gain [] of this layer's subject read (None: the adapter has none)."""
        if not self.spec.read_gain or layer_key not in self._gain_index:
            return None
        return self.read_gain[self._gain_index[layer_key]]

    def has_subject_attn(self, layer_key: str) -> bool:
        return layer_key in self._xattn

    def subject_context(self, subject_tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The resampler's subject tokens [R, num_queries, ctx_dim] for the subject cross-attention; a row
        without valid tokens gets zeros (its read then adds the mean of nothing: zero values)."""
        p = self.gate
        valid = valid.to(device=p.device, dtype=torch.bool)
        any_valid = valid.any(dim=1)
        ctx = self.proj(subject_tokens.to(device=p.device, dtype=p.dtype), valid | ~any_valid[:, None],
                        self.spec.num_queries)
        return ctx * any_valid.to(ctx.dtype)[:, None, None]

    def subject_read(self, layer_key: str, n: torch.Tensor, ctx: torch.Tensor, rows: torch.Tensor,
                     weight: float) -> torch.Tensor | None:
        """The delta a block's cross-attention output gets from the subject (None: no such layer)."""
        module = self._xattn.get(layer_key)
        if module is None:
            return None
        self._check_width("subject layer", layer_key, module.to_q.in_features, n.shape[-1])
        return subject_attention.read(module, n, ctx, rows, weight)

    def reference_context(self, text_ctx: torch.Tensor, subject_tokens: torch.Tensor,
                          valid: torch.Tensor | None = None) -> torch.Tensor:
        """``lerp(text_ctx, proj(subject_tokens), gate)`` -> [B, L, ctx_dim] in text_ctx's dtype.

        A subject batch smaller than the text batch is tiled (ComfyUI stacks cond/uncond chunks).
        Rows whose tokens are all invalid use the text itself as proj (no NaN).
        """
        b, length, cdim = text_ctx.shape
        if cdim != self.spec.ctx_dim:
            raise ValueError(f"P3S: adapter {self.source!r} expects a text context width of "
                             f"{self.spec.ctx_dim}, got {cdim}: use an adapter for this MODEL")
        if subject_tokens.shape[-1] != self.spec.clip_width:
            raise ValueError(
                f"P3S: CLIP_VISION token width {width_name(subject_tokens.shape[-1])} but adapter "
                f"{self.source!r} expects {width_name(self.spec.clip_width)}: connect the "
                "CLIP_VISION model the adapter was trained with")
        if valid is None:
            valid = torch.ones(subject_tokens.shape[:2], dtype=torch.bool, device=subject_tokens.device)
        valid = valid.to(device=subject_tokens.device, dtype=torch.bool)
        bs = subject_tokens.shape[0]
        if bs != b:
            if b % bs:
                raise ValueError(f"P3S: subject token batch {bs} does not divide text batch {b}")
            subject_tokens, valid = subject_tokens.repeat(b // bs, 1, 1), valid.repeat(b // bs, 1)
        p = self.gate
        any_valid = valid.any(dim=1)
        # Give empty rows one dummy key so attention stays finite; their proj is replaced below.
        safe_valid = valid | ~any_valid[:, None]
        text = text_ctx.to(device=p.device, dtype=p.dtype)
        proj = self.proj(subject_tokens.to(device=p.device, dtype=p.dtype), safe_valid.to(p.device),
                         length)
        proj = torch.where(any_valid.to(p.device)[:, None, None], proj, text)
        return torch.lerp(text, proj, self.gate).to(device=text_ctx.device, dtype=text_ctx.dtype)

    def check_compatible(self, **kwargs: Any) -> None:
        """See ``check_compatible``; uses this adapter's spec and file name."""
        check_compatible(self.spec, self.source, **kwargs)

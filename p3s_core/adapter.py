"""P3S adapter (the paper's "trainable copy with simplified layers") and its safetensors files.

Adapter mode, as docs/design.md describes it (the paper gives no architecture; these choices are
ours and kept small and easy to change):
- per transformer block of the REFERENCE pass, a low-rank residual on the self-attention input:
  ``n + up(down(n)) * alpha / rank`` with ``up`` zero-initialised (fresh adapter == identity);
- a subject-token context for the reference pass's cross-attention: a one-layer resampler over
  masked CLIP-vision patch tokens, blended with the text context by a learnable gate that starts
  at 0 (fresh adapter returns the text context exactly);
- optionally (``read_rank`` > 0), per transformer block of the DENOISING pass, a low-rank residual on the
  queries that read the subject tokens (``read_query``): the image learns where to look in the
  reference. Only the subject part of the read uses it (the image's own keys keep the plain query), so
  weight 0 stays plain sampling exactly. The deltas on the reference side alone can shape the subject
  tokens' keys and values but not which image tokens look at them; measured on the world benchmark
  (docs/worldbench.md), they did not lower the denoising loss below plain sampling at any noise level;
- optionally (``read_gain``), per transformer block a learned log-gain added to the subject tokens'
  attention bias (``read_log_gain``): the strength that P3S Apply's weight sets by hand, learned per layer
  and multiplied with the weight (zero-initialised: a fresh gain is weight x 1). On the world benchmark an
  adapter sampled at weight 3 (the node's maximum) transferred more than at 1 or 2, so training was
  leaving strength unused.

The architecture record, the file metadata and the compatibility check are ``p3s_core.adapter_spec``
(re-exported here); this module holds the torch modules and reads and writes the files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import subject_attention
from .adapter_spec import (CLIP_WIDTH_NAMES, FAMILIES, FORMAT_NAME, FORMAT_VERSION, RESERVED_METADATA, AdapterSpec,
                           check_compatible, family_name, width_name)

log = logging.getLogger("P3S")

MAX_HEADER_BYTES = 1024 * 1024  # an SDXL adapter's safetensors header is ~20 KB
FLOAT_DTYPES = ("F32", "F16", "BF16")  # safetensors dtype names the loader accepts

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "FAMILIES", "CLIP_WIDTH_NAMES", "RESERVED_METADATA", "AdapterSpec",
           "LowRankDelta", "SubjectResampler", "P3SAdapter", "save_adapter", "read_adapter_header", "load_adapter",
           "check_compatible", "adapter_state_dict", "load_adapter_state_dict", "expected_tensor_shapes"]


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


def expected_tensor_shapes(spec: AdapterSpec) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape that a file with this metadata must hold."""
    with torch.device("meta"):
        model = P3SAdapter(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def adapter_state_dict(adapter: P3SAdapter, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Flat CPU tensors with file names (for training checkpoints and ``save_adapter``)."""
    return {k: v.detach().to("cpu", dtype=dtype or v.dtype).contiguous()
            for k, v in adapter.state_dict().items()}


def _disagreement(want: Mapping[str, tuple[int, ...]], have: Mapping[str, tuple[int, ...]],
                  source: str) -> ValueError | None:
    """The error for tensor names/shapes that differ from what the metadata describes (None: they agree)."""
    if dict(want) == dict(have):
        return None
    missing = sorted(set(want) - set(have))[:4]
    extra = sorted(set(have) - set(want))[:4]
    shapes = [f"{k}: {have[k]} vs expected {want[k]}" for k in sorted(set(want) & set(have))
              if want[k] != have[k]][:4]
    return ValueError(
        f"P3S: {source} tensors disagree with its P3S metadata (missing {missing}, unexpected "
        f"{extra}, shapes {shapes}): the file is corrupt or was edited; re-download or re-train it")


def load_adapter_state_dict(adapter: P3SAdapter, tensors: Mapping[str, torch.Tensor],
                            source: str = "checkpoint") -> None:
    """Copy ``tensors`` into ``adapter`` after checking names and shapes (nothing copied on error)."""
    want = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    error = _disagreement(want, {k: tuple(v.shape) for k, v in tensors.items()}, source)
    if error is not None:
        raise error
    adapter.load_state_dict(dict(tensors), strict=True)


def _check_extension(path: Path) -> None:
    if path.suffix.lower() != ".safetensors":
        raise ValueError(
            f"P3S: adapter {path.name!r} has extension {path.suffix or '(none)'!r}, expected "
            "'.safetensors': P3S adapters are safetensors only; pickle files are refused for safety. "
            "Use a .safetensors adapter saved by P3S.")


def save_adapter(adapter: P3SAdapter, path: str | os.PathLike,
                 extra_metadata: Mapping[str, Any] | None = None,
                 dtype: torch.dtype | None = None) -> None:
    """Write ``adapter`` to ``path`` (.safetensors) atomically; extra metadata is stringified."""
    from safetensors.torch import save_file

    path = Path(path)
    _check_extension(path)
    meta = {str(k): str(v) for k, v in (extra_metadata or {}).items()}
    clash = sorted(set(meta) & set(RESERVED_METADATA))
    if clash:
        raise ValueError(f"P3S: extra_metadata may not set reserved keys {clash}")
    meta.update(adapter.spec.to_metadata())
    tmp = path.with_name(path.name + ".tmp")
    # Write then rename so a crash mid-save never leaves a truncated adapter behind.
    save_file(adapter_state_dict(adapter, dtype), str(tmp), metadata=meta)
    os.replace(tmp, path)
    log.info("P3S: saved adapter %s (%s, %d layers, rank %d)", path.name,
             family_name(adapter.spec.family), len(adapter.spec.layers), adapter.spec.rank)


def _corrupt(path: Path, exc: BaseException) -> ValueError:
    return ValueError(f"P3S: adapter {path.name!r} could not be read ({type(exc).__name__}: {exc}): "
                      "the file is truncated or corrupt; re-download or re-train it")


def _check_header_size(path: Path) -> None:
    """Refuse a safetensors header larger than any adapter needs before the library reads it into memory."""
    with open(path, "rb") as f:
        head = f.read(8)
    size = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < size <= MAX_HEADER_BYTES:
        found = "no header" if size < 0 else f"a header of {size:,} bytes"
        raise ValueError(f"P3S: adapter {path.name!r} has {found} (a P3S adapter's is under "
                         f"{MAX_HEADER_BYTES:,}): the file is truncated or corrupt (or crafted); re-download or "
                         "re-train it")


def read_adapter_header(path: str | os.PathLike) -> AdapterSpec:
    """Read and check only the metadata of an adapter file (no tensors are loaded)."""
    from safetensors import safe_open

    path = Path(path)
    _check_extension(path)
    if not path.is_file():
        raise FileNotFoundError(f"P3S: adapter file not found: {path}")
    _check_header_size(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
    except Exception as exc:  # safetensors raises its own error type (and OSError) on bad bytes
        raise _corrupt(path, exc) from None
    return AdapterSpec.from_metadata(meta, repr(path.name))


def _read_tensors(path: Path, spec: AdapterSpec) -> dict[str, torch.Tensor]:
    """The file's tensors, read only after their names, shapes and dtypes match what ``spec`` describes."""
    from safetensors import safe_open

    want = expected_tensor_shapes(spec)
    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}
            have = {k: tuple(s.get_shape()) for k, s in slices.items()}
            error = _disagreement(want, have, f"adapter {path.name!r}")
            if error is None:
                dtypes = {k: s.get_dtype() for k, s in slices.items()}
                odd = sorted(k for k, d in dtypes.items() if d not in FLOAT_DTYPES)
                if odd:
                    error = ValueError(f"P3S: adapter {path.name!r} tensor {odd[0]!r} has dtype {dtypes[odd[0]]}, "
                                       f"expected one of {', '.join(FLOAT_DTYPES)}: the file is corrupt or was "
                                       "edited; re-download or re-train it")
            tensors = {k: f.get_tensor(k) for k in want} if error is None else {}
    except Exception as exc:
        raise _corrupt(path, exc) from None
    if error is not None:
        raise error
    return tensors


def load_adapter(path: str | os.PathLike, *, family: str | None = None,
                 layers: Sequence[tuple[str, int]] | None = None, ctx_dim: int | None = None,
                 clip_width: int | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> P3SAdapter:
    """Load a checked adapter; any given MODEL/CLIP_VISION facts are checked before tensors load.

    Untrusted files are checked in order before anything is allocated: the header's size, every header
    value against ``LIMITS`` and ``MAX_PARAMETERS``, the MODEL / CLIP_VISION facts, then every tensor's
    name, shape and dtype against the header; only then are the tensors read and the module built.
    """
    path = Path(path)
    spec = read_adapter_header(path)
    check_compatible(spec, path.name, family=family, layers=layers, ctx_dim=ctx_dim,
                     clip_width=clip_width)
    tensors = _read_tensors(path, spec)
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"P3S: adapter {path.name!r} tensor {name!r} holds NaN/inf: the file "
                             "is corrupt or training diverged; re-download or re-train it")
    adapter = P3SAdapter(spec)
    adapter.source = path.name
    load_adapter_state_dict(adapter, tensors, source=f"adapter {path.name!r}")
    log.info("P3S: loaded adapter %s (%s, %d layers, rank %d)", path.name,
             family_name(spec.family), len(spec.layers), spec.rank)
    return adapter.to(device=device, dtype=dtype)

"""The P3S adapter's architecture record (``AdapterSpec``) and its file metadata, and the compatibility check
against a MODEL and a CLIP_VISION model.

Files are safetensors only, flat tensor names (``lora.input.1.0.down.weight``, ``proj.*``, ``gate``) and
string metadata (``AdapterSpec.to_metadata``), checked here before any tensor is read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

FORMAT_NAME = "p3s-adapter"
FORMAT_VERSION = 1
FAMILIES = {"sd15": "SD1.5", "sdxl": "SDXL"}
# Known CLIP-vision token widths, only to make mismatch messages readable.
CLIP_WIDTH_NAMES = {768: "ViT-B", 1024: "ViT-L", 1280: "ViT-H", 1664: "ViT-bigG"}
RESERVED_METADATA = ("format", "format_version", "family", "rank", "alpha", "clip_width",
                     "ctx_dim", "num_queries", "layers", "read_rank", "read_gain",
                     "subject_attn")
# Upper bounds on what a file header may declare (ours). A shared workflow's adapter is untrusted input:
# the loader checks the header against these, and the tensor shapes against the header, before it
# allocates anything. Each bound is several times what SD1.5 / SDXL adapters use (SDXL: 70 layers of
# width <= 1280, ctx_dim 2048, CLIP bigG 1664, 77 queries, rank <= 128).
LIMITS = {"rank": 1024, "clip_width": 4096, "ctx_dim": 4096, "num_queries": 1024, "layers": 512,
          "layer_width": 8192, "layer_key": 64}
MAX_PARAMETERS = 256 * 2 ** 20   # the whole adapter: 1 GiB in fp32
MAX_METADATA_VALUE = 64 * 1024   # characters of one metadata value (the layer list of SDXL is ~2 KB)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "FAMILIES", "CLIP_WIDTH_NAMES", "RESERVED_METADATA", "LIMITS",
           "MAX_PARAMETERS", "MAX_METADATA_VALUE", "AdapterSpec", "check_compatible", "family_name", "width_name"]


def _number(meta: Mapping[str, str], key: str, kind: type) -> int | float:
    """One numeric header value; a value longer than any real number is refused before it is converted."""
    text = str(meta[key]).strip()
    if len(text) > 32:
        raise ValueError(f"{key} is {len(text)} characters long, not a number")
    return kind(text)


def _flag(meta: Mapping[str, str], key: str) -> bool:
    """A 0/1 header value (absent: 0)."""
    text = str(meta.get(key, "0")).strip()
    if text not in ("0", "1"):
        raise ValueError(f"{key} is {text[:32]!r}, expected 0 or 1")
    return text == "1"


def family_name(family: str) -> str:
    return FAMILIES.get(family, family)


def width_name(width: int) -> str:
    name = CLIP_WIDTH_NAMES.get(width)
    return f"{width} ({name})" if name else str(width)


@dataclass
class AdapterSpec:
    """Architecture of one adapter; everything needed to rebuild it from a file header."""

    family: str
    rank: int
    alpha: float
    clip_width: int
    ctx_dim: int
    layers: list[tuple[str, int]] = field(default_factory=list)
    num_queries: int = 77
    version: int = FORMAT_VERSION
    # rank of the read deltas (the denoising pass's queries on subject tokens); 0: none (files before them)
    read_rank: int = 0
    # a learned log-gain per layer on the subject tokens' attention share (``read_gain`` tensor); False: none
    read_gain: bool = False
    # width of the subject cross-attention per layer (p3s_core/subject_attention.py); 0: none
    subject_attn: int = 0

    def __post_init__(self) -> None:
        self.layers = [(str(k), int(d)) for k, d in self.layers]
        self.read_gain = bool(self.read_gain)
        self.validate()

    def validate(self, source: str = "adapter spec") -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"P3S: {source}: family {self.family!r} is not supported; "
                             f"expected one of {sorted(FAMILIES)}")
        for name in ("rank", "clip_width", "ctx_dim", "num_queries"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"P3S: {source}: {name} must be > 0, found {getattr(self, name)}")
            if int(getattr(self, name)) > LIMITS[name]:
                raise ValueError(f"P3S: {source}: {name}={getattr(self, name)} is above the limit of "
                                 f"{LIMITS[name]} for a P3S adapter")
        if not 0 <= int(self.read_rank) <= LIMITS["rank"]:
            raise ValueError(f"P3S: {source}: read_rank must be in 0..{LIMITS['rank']}, found {self.read_rank}")
        if not 0 <= int(self.subject_attn) <= LIMITS["rank"]:
            raise ValueError(f"P3S: {source}: subject_attn must be in 0..{LIMITS['rank']}, found {self.subject_attn}")
        if not math.isfinite(float(self.alpha)):
            raise ValueError(f"P3S: {source}: alpha must be finite, found {self.alpha}")
        if len(self.layers) > LIMITS["layers"]:
            raise ValueError(f"P3S: {source}: {len(self.layers)} layers is above the limit of {LIMITS['layers']} "
                             "for a P3S adapter")
        keys = [k for k, _ in self.layers]
        if len(set(keys)) != len(keys):
            raise ValueError(f"P3S: {source}: duplicate layer keys in {keys[:8]}")
        for key, dim in self.layers:
            parts = key.split(".")
            if (len(key) > LIMITS["layer_key"] or not all(p.isidentifier() or p.isdigit() for p in parts)
                    or not 0 < dim <= LIMITS["layer_width"]):
                raise ValueError(f"P3S: {source}: bad layer ({key[:80]!r}, {dim}); expected keys like "
                                 f"'input.1.0' and a width in 1..{LIMITS['layer_width']}")
        # A key that is the prefix of another would need one module to be both a leaf and a container in
        # the nested tensor naming (sorted: a prefix sorts right before the keys it prefixes).
        ordered = sorted(keys)
        for key, following in zip(ordered, ordered[1:]):
            if following.startswith(key + "."):
                raise ValueError(f"P3S: {source}: layer key {key!r} is a prefix of another key")
        if self.parameter_count() > MAX_PARAMETERS:
            raise ValueError(f"P3S: {source}: the header describes {self.parameter_count():,} parameters, above "
                             f"the limit of {MAX_PARAMETERS:,} for a P3S adapter")

    def parameter_count(self) -> int:
        """Parameters of an adapter with this spec, from the numbers alone (nothing is built)."""
        c, d, q = int(self.clip_width), int(self.ctx_dim), int(self.num_queries)
        deltas = sum(2 * dim * (int(self.rank) + int(self.read_rank)) for _, dim in self.layers)
        # queries, in_norm, in_proj, q_norm, to_q/k/v, to_out, out_norm, out_proj (p3s_core/adapter.py)
        resampler = q * d + 2 * c + (c * d + d) + 2 * d + 3 * d * d + (d * d + d) + 2 * d + (d * d + d)
        gains = len(self.layers) if self.read_gain else 0
        w = int(self.subject_attn)
        subject = sum(2 * dim * w + 2 * d * w for _, dim in self.layers)  # p3s_core/subject_attention.py
        return deltas + gains + subject + resampler + 1  # + the gate

    def to_metadata(self) -> dict[str, str]:
        """The safetensors metadata (all strings) that describes this spec."""
        meta = {
            "format": FORMAT_NAME, "format_version": str(self.version), "family": self.family,
            "rank": str(int(self.rank)), "alpha": repr(float(self.alpha)),
            "clip_width": str(int(self.clip_width)), "ctx_dim": str(int(self.ctx_dim)),
            "num_queries": str(int(self.num_queries)),
            "layers": json.dumps([[k, int(d)] for k, d in self.layers]),
        }
        if self.read_rank:  # absent = 0, so adapters without read deltas keep their exact header
            meta["read_rank"] = str(int(self.read_rank))
        if self.read_gain:  # absent = none, likewise
            meta["read_gain"] = "1"
        if self.subject_attn:
            meta["subject_attn"] = str(int(self.subject_attn))
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str] | None, source: str = "adapter") -> "AdapterSpec":
        """Parse and check P3S metadata; ``source`` names the file in error messages."""
        if not meta or meta.get("format") != FORMAT_NAME:
            found = "no metadata" if not meta else f"format={meta.get('format')!r}"
            raise ValueError(
                f"P3S: {source} is not a P3S adapter ({found}; expected format={FORMAT_NAME!r} "
                "metadata). It may be a LoRA, IPAdapter or checkpoint: load it with the matching "
                "loader, or use an adapter file saved by P3S training.")
        version = meta.get("format_version")
        if version != str(FORMAT_VERSION):
            raise ValueError(
                f"P3S: {source} has adapter format_version {version!r}, this P3S supports "
                f"{FORMAT_VERSION!r}: update the P3S node pack, or re-save the adapter with this one.")
        too_long = sorted(k for k in RESERVED_METADATA if len(str(meta.get(k, ""))) > MAX_METADATA_VALUE)
        if too_long:
            raise ValueError(f"P3S: {source} has unreadable P3S metadata ({too_long} longer than "
                             f"{MAX_METADATA_VALUE} characters): the file is corrupt, re-download or re-train it")
        try:
            spec = cls(family=meta["family"], rank=_number(meta, "rank", int), alpha=_number(meta, "alpha", float),
                       clip_width=_number(meta, "clip_width", int), ctx_dim=_number(meta, "ctx_dim", int),
                       layers=[(k, d) for k, d in json.loads(meta["layers"])],
                       num_queries=_number({"num_queries": "77", **meta}, "num_queries", int), version=int(version),
                       read_rank=_number({"read_rank": "0", **meta}, "read_rank", int),
                       read_gain=_flag(meta, "read_gain"),
                       subject_attn=_number({"subject_attn": "0", **meta}, "subject_attn", int))
        except (ValueError, OverflowError, RecursionError) as exc:
            if str(exc).startswith("P3S:"):
                raise ValueError(f"{exc} (in {source}; the file is corrupt, re-download or "
                                 "re-train it)") from None
            detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            raise ValueError(f"P3S: {source} has unreadable P3S metadata ({detail}): the file is "
                             "corrupt, re-download or re-train it") from None
        except (KeyError, TypeError) as exc:
            raise ValueError(f"P3S: {source} has incomplete P3S metadata (missing or bad {exc}): "
                             "the file is corrupt, re-download or re-train it") from None
        return spec


def check_compatible(spec: AdapterSpec, source: str, *, family: str | None = None,
                     layers: Sequence[tuple[str, int]] | None = None, ctx_dim: int | None = None,
                     clip_width: int | None = None) -> None:
    """Raise ``ValueError("P3S: ...")`` if ``spec`` does not fit the MODEL / CLIP_VISION given."""
    if family is not None and family != spec.family:
        raise ValueError(
            f"P3S: adapter {source!r} is for {family_name(spec.family)} but the MODEL is "
            f"{family_name(family)}: use an {family_name(family)} adapter")
    if ctx_dim is not None and int(ctx_dim) != spec.ctx_dim:
        raise ValueError(
            f"P3S: adapter {source!r} has cross-attention width {spec.ctx_dim} but the MODEL uses "
            f"{ctx_dim}: use an adapter trained for this model")
    if layers is not None:
        want = {str(k): int(d) for k, d in layers}
        have = dict(spec.layers)
        if want != have:
            missing = sorted(set(want) - set(have))
            extra = sorted(set(have) - set(want))
            dims = sorted(f"{k}: {have[k]} vs {want[k]}" for k in set(want) & set(have)
                          if want[k] != have[k])
            detail = "; ".join(s for s in (
                f"MODEL layers missing from the adapter: {missing[:6]}" if missing else "",
                f"adapter layers not in the MODEL: {extra[:6]}" if extra else "",
                f"width adapter vs MODEL: {dims[:6]}" if dims else "") if s)
            raise ValueError(
                f"P3S: adapter {source!r} has {len(have)} transformer layers, the MODEL has "
                f"{len(want)}, and they differ ({detail}): it was trained on a different architecture; "
                "use an adapter trained for this model")
    if clip_width is not None and int(clip_width) != spec.clip_width:
        raise ValueError(
            f"P3S: CLIP_VISION gives token width {width_name(int(clip_width))} but adapter "
            f"{source!r} expects {width_name(spec.clip_width)}: connect the CLIP_VISION model the "
            "adapter was trained with")

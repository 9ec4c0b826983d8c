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
                     "ctx_dim", "num_queries", "layers")

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "FAMILIES", "CLIP_WIDTH_NAMES", "RESERVED_METADATA", "AdapterSpec",
           "check_compatible", "family_name", "width_name"]


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

    def __post_init__(self) -> None:
        self.layers = [(str(k), int(d)) for k, d in self.layers]
        self.validate()

    def validate(self, source: str = "adapter spec") -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"P3S: {source}: family {self.family!r} is not supported; "
                             f"expected one of {sorted(FAMILIES)}")
        for name in ("rank", "clip_width", "ctx_dim", "num_queries"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"P3S: {source}: {name} must be > 0, found {getattr(self, name)}")
        if not math.isfinite(float(self.alpha)):
            raise ValueError(f"P3S: {source}: alpha must be finite, found {self.alpha}")
        keys = [k for k, _ in self.layers]
        if len(set(keys)) != len(keys):
            raise ValueError(f"P3S: {source}: duplicate layer keys in {keys}")
        for key, dim in self.layers:
            parts = key.split(".")
            if not all(p.isidentifier() or p.isdigit() for p in parts) or dim <= 0:
                raise ValueError(f"P3S: {source}: bad layer ({key!r}, {dim}); expected keys like "
                                 "'input.1.0' and a positive width")
            # A key that is the prefix of another would need one module to be both a leaf and a
            # container in the nested tensor naming.
            if any(other.startswith(key + ".") for other in keys):
                raise ValueError(f"P3S: {source}: layer key {key!r} is a prefix of another key")

    def to_metadata(self) -> dict[str, str]:
        """The safetensors metadata (all strings) that describes this spec."""
        return {
            "format": FORMAT_NAME, "format_version": str(self.version), "family": self.family,
            "rank": str(int(self.rank)), "alpha": repr(float(self.alpha)),
            "clip_width": str(int(self.clip_width)), "ctx_dim": str(int(self.ctx_dim)),
            "num_queries": str(int(self.num_queries)),
            "layers": json.dumps([[k, int(d)] for k, d in self.layers]),
        }

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
        try:
            spec = cls(family=meta["family"], rank=int(meta["rank"]), alpha=float(meta["alpha"]),
                       clip_width=int(meta["clip_width"]), ctx_dim=int(meta["ctx_dim"]),
                       layers=[(k, d) for k, d in json.loads(meta["layers"])],
                       num_queries=int(meta.get("num_queries", "77")), version=int(version))
        except ValueError as exc:
            if str(exc).startswith("P3S:"):
                raise ValueError(f"{exc} (in {source}; the file is corrupt, re-download or "
                                 "re-train it)") from None
            raise ValueError(f"P3S: {source} has unreadable P3S metadata ({exc}): the file is "
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

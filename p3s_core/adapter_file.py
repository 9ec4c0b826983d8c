"""P3S adapter files: state dicts, and the checked safetensors save and load (every header value, shape and
dtype is checked before anything is allocated: adapters are files users download)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .adapter_net import P3SAdapter
from .adapter_spec import RESERVED_METADATA, AdapterSpec, check_compatible, family_name

log = logging.getLogger("P3S")

MAX_HEADER_BYTES = 1024 * 1024  # an SDXL adapter's safetensors header is ~20 KB
FLOAT_DTYPES = ("F32", "F16", "BF16")  # safetensors dtype names the loader accepts


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

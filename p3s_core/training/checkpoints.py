"""Resumable training checkpoints: adapter, optimizer, step, loss history and RNG states in one file.

A torch file of tensors, numbers and strings only: ``load_checkpoint`` reads it with
``weights_only=True`` (no pickle code runs).
"""
from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import asdict
from pathlib import Path

import torch

from ..adapter import AdapterSpec, P3SAdapter, adapter_state_dict, load_adapter_state_dict

CHECKPOINT_FORMAT = "p3s-train-checkpoint"


def checkpoint_path(output: Path, step: int) -> Path:
    """``NAME.stepNNNNNN.pt`` next to the adapter ``NAME.safetensors``."""
    return output.with_name(f"{output.stem}.step{step:06d}.pt")


def save_checkpoint(path: str | os.PathLike, adapter: P3SAdapter, optimizer: torch.optim.Optimizer, step: int,
                    history: list[dict], generator: torch.Generator, config=None, scaler=None) -> Path:
    """Training state -> ``path`` (written then renamed, so a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT, "version": 1, "step": int(step),
        "history": [{k: (int(v) if k == "step" else float(v)) for k, v in h.items()} for h in history],
        "spec": adapter.spec.to_metadata(), "adapter": adapter_state_dict(adapter),
        "optimizer": optimizer.state_dict(),
        "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "config": json.dumps(asdict(config)) if config is not None else "{}",
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"P3S: --resume: checkpoint {path} not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # PyTorch's text suggests weights_only=False, which runs the file's code: never for an untrusted file.
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise ValueError(f"P3S: --resume: {path.name} holds Python objects, not only tensors and numbers"
                         f"{f' (it refers to {found.group(1)})' if found else ''}: it is not a P3S training "
                         "checkpoint, and P3S never runs code from a file. Resume from a NAME.stepNNNNNN.pt "
                         "written by P3S training") from None
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        detail = "" if "weights_only" in first else f": {first}"
        raise ValueError(f"P3S: --resume: {path.name} could not be read ({type(exc).__name__}{detail}): it is not "
                         "a P3S training checkpoint or it is truncated") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"P3S: --resume: {path.name} is not a P3S training checkpoint (to start from a finished "
                         "adapter .safetensors, train from scratch; checkpoints are the *.pt files)")
    return data


def _restore_rng(rng: dict, generator: torch.Generator | None) -> None:
    if generator is not None and "generator" in rng:
        generator.set_state(rng["generator"])
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def load_checkpoint(path: str | os.PathLike, adapter: P3SAdapter, optimizer: torch.optim.Optimizer | None,
                    generator: torch.Generator | None, scaler=None) -> tuple[int, list[dict], dict]:
    """Restore ``save_checkpoint`` state into the given objects; returns (step, history, config dict)."""
    path = Path(path)
    data = _read(path)
    spec = AdapterSpec.from_metadata(data["spec"], repr(path.name))
    if spec.to_metadata() != adapter.spec.to_metadata():
        raise ValueError(f"P3S: --resume: {path.name} was trained with a different adapter/model "
                         f"(family {spec.family}, rank {spec.rank}, {len(spec.layers)} layers) than this run "
                         f"(family {adapter.spec.family}, rank {adapter.spec.rank}, {len(adapter.spec.layers)} "
                         "layers): use the same --checkpoint, --rank and CLIP vision")
    device = next(adapter.parameters()).device
    load_adapter_state_dict(adapter, {k: v.to(device) for k, v in data["adapter"].items()},
                            source=f"checkpoint {path.name!r}")
    if optimizer is not None:
        optimizer.load_state_dict(data["optimizer"])
    _restore_rng(data.get("rng", {}), generator)
    if scaler is not None and data.get("scaler"):
        scaler.load_state_dict(data["scaler"])
    return int(data["step"]), list(data["history"]), json.loads(data.get("config") or "{}")

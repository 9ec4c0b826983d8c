#!/usr/bin/env python
"""Train a P3S adapter for an SD1.5 or SDXL checkpoint (docs/training.md has every option).

    python scripts/train_adapter.py --comfyui-dir ~/ComfyUI \\
        --checkpoint v1-5-pruned-emaonly.safetensors --clip-vision CLIP-ViT-H-14.safetensors \\
        --data my_subjects/ --output models/p3s/p3s_sd15.safetensors --steps 4000

A thin command line: it imports ComfyUI, loads any ``--custom-node`` folders with ComfyUI's own loader
(a pack that registers another model family, or ``p3s_host/tiny_registrar`` for the tiny demo models),
then hands a ``TrainJob`` to the pack's trainer (nodes/train/, the ComfyUI side; the loop, dataset and
losses are p3s_core/training/). One flag per ``TrainConfig`` field, with its default.

Multi-GPU: ``torchrun --nproc_per_node N scripts/train_adapter.py ...`` (gradients of the adapter are
averaged across processes, rank 0 writes every file).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # appended: ComfyUI's own top-level modules (nodes, utils, ...) keep priority
from p3s_core.training.config import TrainConfig, config_fields  # noqa: E402
from p3s_host import comfy_env  # noqa: E402

JOB_OPTIONS = ("checkpoint", "clip_vision", "data", "output", "resolution", "acl_layers", "selection_features",
               "sample_steps", "sample_prompt", "resume")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """``--steps`` etc.: one flag per TrainConfig field; default, help and choices come from the field."""
    hints = typing.get_type_hints(TrainConfig)
    g = p.add_argument_group("training settings (TrainConfig)")
    for f in config_fields():
        meta = dict(f.metadata)
        kind = meta.pop("type", None) or hints[f.name]
        kw: dict = {"default": f.default, "help": f"{meta.pop('help')} (default: {f.default})", **meta}
        if isinstance(f.default, tuple):
            kw.update(nargs=len(f.default), type=type(f.default[0]), metavar=("LOW", "HIGH"))
        else:
            kw["type"] = kind
        g.add_argument("--" + f.name.replace("_", "-"), **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a P3S adapter (docs/training.md).")
    p.add_argument("--comfyui-dir", default=None, help="ComfyUI checkout (default: $COMFYUI_DIR)")
    p.add_argument("--custom-node", action="append", default=[], metavar="DIR",
                   help="load this custom-node folder before the models, as ComfyUI would (repeatable); e.g. a "
                        "pack that registers a model family, or p3s_host/tiny_registrar for the tiny demo models")
    p.add_argument("--checkpoint", required=True, help="base checkpoint: a path, or a name in models/checkpoints")
    p.add_argument("--clip-vision", required=True, help="CLIP vision model: a path, or a name in models/clip_vision")
    p.add_argument("--data", required=True, help="dataset folder: images/, captions/, masks/ or points/, "
                                                 "optionally references/ (docs/training.md)")
    p.add_argument("--output", required=True, help="adapter file to write (.safetensors)")
    p.add_argument("--resolution", type=int, default=None, help="training side in pixels (default 512 SD1.5, 1024 SDXL)")
    p.add_argument("--acl-layers", default="all", help="'all' or comma-separated layer keys, e.g. input.4.0,middle.0.0")
    p.add_argument("--selection-features", choices=("clip", "builtin"), default="clip",
                   help="features for the on-the-fly RNGR selection (clip: as P3S Apply with CLIP vision)")
    p.add_argument("--sample-steps", type=int, default=20, help="sampling steps of the sample images")
    p.add_argument("--sample-prompt", default=None, help="prompt of the sample images (default: first caption)")
    p.add_argument("--resume", default=None, help="a *.stepNNNNNN.pt checkpoint to continue from")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    _add_config_flags(p)
    return p


def make_job(args: argparse.Namespace, train_module):
    """The pack's TrainJob (and TrainConfig) from parsed arguments; ``train_module`` is nodes.train."""
    config = train_module.TrainConfig(**{f.name: (tuple(v) if isinstance(v := getattr(args, f.name), list) else v)
                                         for f in config_fields()})
    return train_module.TrainJob(config=config, progress=not args.no_progress,
                                 **{k: getattr(args, k) for k in JOB_OPTIONS})


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    comfy_env.import_comfy(args.comfyui_dir, cpu=True if args.cpu else None)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        import torch
        import torch.distributed as dist
        dist.init_process_group("nccl" if torch.cuda.is_available() and not args.cpu else "gloo")
    for folder in args.custom_node:
        comfy_env.load_custom_node(folder)
    train = comfy_env.pack_module("nodes.train")
    try:
        result = train.run_training(make_job(args, train), train.DistContext.from_env())
    except ValueError as exc:
        if str(exc).startswith("P3S:"):  # a message for the user, not a crash
            raise SystemExit(str(exc)) from None
        raise
    except KeyboardInterrupt as exc:  # TrainingInterrupted: the loop saved a checkpoint, said how to resume
        if getattr(exc, "step", None) is None:
            logging.getLogger("P3S").warning("P3S: aborted at once: the progress since the last checkpoint "
                                             "is not saved")
        raise SystemExit(130) from None
    if distributed:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()

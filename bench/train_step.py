"""Time one P3S adapter training step (forward with injection + ACL recording + backward + AdamW).

Tiny random test models on the CPU by default (no download, seconds); pass a real checkpoint to measure
what users will see, ideally on a GPU:

    python bench/train_step.py                                     # tiny SD1.5-shaped model, CPU
    python bench/train_step.py --checkpoint v1-5-pruned-emaonly.safetensors \\
        --clip-vision CLIP-ViT-H-14.safetensors --resolution 512 --precision bf16

Prints seconds per step with the Attention Consistency Loss on (3 U-Net passes, 2 with grad) and off
(2 passes), after warm-up steps. ComfyUI comes from --comfyui-dir, $COMFYUI_DIR or the test host.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # p3s_host; appended so ComfyUI's own top-level modules keep priority
from p3s_host import comfy_env  # noqa: E402
from p3s_host.server import COMFYUI_DIR  # noqa: E402


def _models(args, tmp: Path) -> tuple[str, str, int | None]:
    """(checkpoint, CLIP vision, side): the user's, or tiny random ones written into ``tmp``."""
    if args.checkpoint is not None:
        return args.checkpoint, args.clip_vision, args.resolution
    from p3s_host import tiny_models
    tiny_models.register()
    return (tiny_models.make_checkpoint(str(tmp / "tiny_sd15.safetensors")),
            tiny_models.make_clip_vision_file(str(tmp / "tiny_clip_vision.safetensors")), args.resolution or 64)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui-dir", default=str(COMFYUI_DIR), help="default: $COMFYUI_DIR, else the test host")
    p.add_argument("--checkpoint", default=None, help="real checkpoint (default: tiny random test model)")
    p.add_argument("--clip-vision", default=None)
    p.add_argument("--data", default=None, help="dataset folder (default: synthetic scenes)")
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--cpu", action="store_true")
    args = p.parse_args(argv)

    comfy_env.import_comfy(args.comfyui_dir, cpu=True if args.cpu else None)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="p3s_bench_"))
    if args.checkpoint is not None and not args.clip_vision:
        p.error("--clip-vision is required with --checkpoint")
    ckpt, cvp, side = _models(args, tmp)
    train = comfy_env.pack_module("nodes.train")
    training = comfy_env.pack_module("p3s_core.training")
    model, clip, vae, cv = train.load_models(ckpt, cvp, args.precision)
    side = side or (1024 if comfy_env.pack_module("nodes.models").model_family(model) == "sdxl" else 512)
    if args.data:
        data = Path(args.data)
    else:
        from p3s_host.scenes import write_dataset
        data = write_dataset(tmp / "data", range(4), side)
    backend = train.ComfyBackend(model, clip, vae, cv, resolution=side, precision=args.precision,
                                 selection_features="builtin")
    dataset = training.SubjectDataset(data, side)
    result = {"device": str(backend.device), "model": Path(str(ckpt)).name, "resolution": side,
              "batch_size": args.batch_size, "precision": args.precision, "threads": torch.get_num_threads()}
    for name, lam in (("acl_on", 100.0), ("acl_off", 0.0)):
        cfg = training.TrainConfig(steps=args.steps + 2, batch_size=args.batch_size, rank=args.rank,
                                   acl_weight=lam, precision=args.precision)
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        res = training.train(backend, dataset, cfg, None, progress=False)
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
            result[f"{name}_peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        # train() times from its 2nd step on (the first warms caches up)
        result[f"{name}_s_per_step"] = round(res.seconds_per_step, 4)
        result[f"{name}_total_s"] = round(time.perf_counter() - t, 2)
    backend.close()
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

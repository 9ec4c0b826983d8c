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
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("p3s_train_adapter", REPO / "scripts" / "train_adapter.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_data(root: Path, side: int) -> Path:
    import numpy as np
    from PIL import Image
    sys.path.insert(0, str(REPO / "tests" / "support"))
    import scenes
    for sub in ("images", "captions", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(4):
        image, masks, _ = scenes.two_subjects(side, side, seed=i)
        scenes.save_png(image, root / "images" / f"s{i}.png")
        Image.fromarray((masks[i % 2].numpy() * 255).astype(np.uint8)).save(root / "masks" / f"s{i}.png")
        (root / "captions" / f"s{i}.txt").write_text("a dog on the grass")
    return root


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR",
                                                           str(Path.home() / ".cache/p3s/host/ComfyUI")))
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

    ta = _script()
    ta.setup_comfy(args.comfyui_dir, cpu=True if args.cpu else None)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="p3s_bench_"))
    if args.checkpoint is None:
        ta.register_tiny()
        import tiny_models
        ckpt = tiny_models.make_checkpoint(str(tmp / "tiny_sd15.safetensors"))
        cvp = tiny_models.make_clip_vision_file(str(tmp / "tiny_clip_vision.safetensors"))
        side = args.resolution or 64
    else:
        if not args.clip_vision:
            p.error("--clip-vision is required with --checkpoint")
        ckpt, cvp, side = args.checkpoint, args.clip_vision, args.resolution
    pack = ta.load_pack()
    training = ta.pack_module(pack, "p3s_core.training")
    model, clip, vae, cv = ta.load_models(ckpt, cvp, args.precision)
    side = side or (1024 if ta.pack_module(pack, "nodes.models").model_family(model) == "sdxl" else 512)
    data = Path(args.data) if args.data else _tiny_data(tmp / "data", side)
    backend = ta.make_backend(pack, model, clip, vae, cv, resolution=side, precision=args.precision,
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
        # train() times from its 2nd step; drop one more warm-up step here for a steadier figure
        result[f"{name}_s_per_step"] = round(res.seconds_per_step, 4)
        result[f"{name}_total_s"] = round(time.perf_counter() - t, 2)
    backend.close()
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

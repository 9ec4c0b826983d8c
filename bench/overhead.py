"""Time and peak memory of P3S injection vs plain sampling on a U-Net with the real SD1.5 shapes.

Random weights (no download), ComfyUI's own classes and sampler, cfg 7. Prints one line per mode and
ends with one line:  ratio per_step=<x> cached=<x> memory_per_step=<x> memory_cached=<x>

    python bench/overhead.py [--latent 32] [--steps 6] [--repeats 2] [--device cpu|cuda]

Run it with the host's python (scripts/setup_host.sh): ~/.cache/p3s/host/venv/bin/python.
On CPU, peak memory is the process RSS sampled every 2 ms (weights included); on CUDA it is
torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # p3s_host; appended so ComfyUI's own top-level modules keep priority
from p3s_host import comfy_env  # noqa: E402


def _load_host(device: str, attention: str):
    """ComfyUI in-process, the pack loaded; returns (nodes.patch, p3s_core.schedule) of the pack."""
    # P3S's biased read uses torch SDPA; on CPU ComfyUI defaults to its sub-quadratic attention, so plain
    # and P3S would run different kernels. "pytorch" gives plain the same kernel (what GPU users get).
    comfy_env.import_comfy(cpu=device == "cpu",
                           args_overrides={"use_pytorch_cross_attention": attention == "pytorch"})
    comfy_env.comfy_nodes()
    return comfy_env.pack_module("nodes.patch"), comfy_env.pack_module("p3s_core.schedule")


class PeakMemory:
    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0, False

    def __enter__(self):
        import torch
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil
            proc = psutil.Process()
            self.peak = proc.memory_info().rss

            def poll():
                while not self._stop:
                    self.peak = max(self.peak, proc.memory_info().rss)
                    time.sleep(0.002)
            self._t = threading.Thread(target=poll, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        import torch
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop = True
            self._t.join()


# The SD1.5 U-Net config as comfy/model_detection.py defines it for real SD1.5 checkpoints.
SD15_UNET = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
             'legacy': False, 'adm_in_channels': None, 'in_channels': 4, 'model_channels': 320,
             'num_res_blocks': [2, 2, 2, 2], 'transformer_depth': [1, 1, 1, 1, 1, 1, 0, 0],
             'channel_mult': [1, 2, 4, 4], 'transformer_depth_middle': 1, 'use_linear_in_transformer': False,
             'context_dim': 768, 'num_heads': 8, 'transformer_depth_output': [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             'use_temporal_attention': False, 'use_temporal_resblock': False}


def sd15_patcher(device: str, dtype):
    """A ModelPatcher of an SD1.5-shaped U-Net with random weights (scaled to keep activations sane)."""
    import torch
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    mc = comfy.supported_models.SD15(dict(SD15_UNET))
    mc.set_inference_dtype(dtype, None)
    dev = torch.device(device)
    model = comfy.model_base.BaseModel(mc, device=dev)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            if p.ndim <= 1:
                p.fill_(1.0 if p.shape and p.shape[0] > 0 else 0.0)
            else:
                p.normal_(0, 1.0 / max(1, p[0].numel()) ** 0.5)
    model.diffusion_model.to(dev, dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=dev)


def best_of(run, repeats: int, device: str) -> tuple[float, int]:
    """(best seconds, peak memory bytes) of ``repeats`` calls of ``run``."""
    import torch
    best, peak = float("inf"), 0
    for _ in range(repeats):
        with PeakMemory(device) as pm:
            t = time.perf_counter()
            run()
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        peak = max(peak, pm.peak)
    return best, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px, 64 = 512 px)")
    ap.add_argument("--steps", type=int, default=6,
                    help="sampling steps; cached mode's one reference pass weighs more the fewer the steps")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per mode (the best is kept)")
    ap.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (CUDA default)")
    ap.add_argument("--attention", choices=("pytorch", "default"), default="pytorch",
                    help="ComfyUI's attention for plain sampling: pytorch SDPA (as on GPU) or the host default")
    a = ap.parse_args()
    import torch
    torch.manual_seed(0)
    patch_mod, schedule_mod = _load_host(a.device, a.attention)
    import comfy.sample
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.float16 if a.device == "cuda" else torch.float32)
    t0 = time.time()
    mp = sd15_patcher(a.device, dtype)
    print(f"model: SD1.5 shapes, {sum(p.numel() for p in mp.model.parameters()) / 1e6:.0f}M params, {dtype}, "
          f"{a.device}, built in {time.time() - t0:.1f}s; latent {a.latent}x{a.latent}, cfg 7, {a.steps} steps")

    g = torch.Generator().manual_seed(1)
    pos = [[torch.randn(1, 77, 768, generator=g), {}]]
    neg = [[torch.randn(1, 77, 768, generator=g), {}]]
    latent = torch.zeros(1, 4, a.latent, a.latent)
    ref = torch.randn(1, 4, a.latent, a.latent, generator=g)
    mask = torch.zeros(1, a.latent, a.latent)
    mask[:, a.latent // 4: 3 * a.latent // 4, a.latent // 8: a.latent // 2] = 1.0  # one subject, ~1/4 of the image

    def variant(mode):
        if mode == "plain":
            return mp
        m = mp.clone()
        patch_mod.P3SPatch(reference_latent=ref, mask=mask, schedule=schedule_mod.WeightSchedule.constant(1.0),
                           mode=mode).install(m)
        return m

    def run(m, steps=a.steps):
        noise = comfy.sample.prepare_noise(latent, 0)
        with torch.inference_mode():
            return comfy.sample.sample(m, noise, steps, 7.0, "euler", "normal", pos, neg, latent,
                                       disable_pbar=True, seed=0)

    models = {mode: variant(mode) for mode in ("plain", "per_step", "cached")}
    for m in models.values():  # warm-up of every mode: model load, allocator growth, kernels
        run(m, 2)
    results = {}
    for mode, m in models.items():
        results[mode] = best_of(lambda: run(m), a.repeats, a.device)
        print(f"{mode:9s} {results[mode][0]:8.2f} s   peak {results[mode][1] / 2**20:9.0f} MiB")
    p_t, p_m = results["plain"]
    print(f"ratio per_step={results['per_step'][0] / p_t:.2f}x cached={results['cached'][0] / p_t:.2f}x "
          f"memory_per_step={results['per_step'][1] / p_m:.2f}x memory_cached={results['cached'][1] / p_m:.2f}x")


if __name__ == "__main__":
    main()

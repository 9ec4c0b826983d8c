"""What P3S costs over plain sampling, measured on the product: the real nodes in a real ComfyUI server.

The prompts are the ones a user runs (LoadImage -> P3S Point Picker -> P3S Apply -> KSampler -> VAEDecode
-> PreviewImage, with the shipped ``assets/two_dogs.png`` and the example workflow's points), on a
random-weight checkpoint with the real SD1.5 (or SDXL) shapes (bench/checkpoints.py), cfg 7, euler.
Variants: ``plain`` (no P3S), ``per_step`` and ``cached`` (P3S Apply's reference_mode) and, with
``--peer DIR`` (a checkout of Kosinkadink/ComfyUI-Advanced-ControlNet), ``peer``: its Reference ControlNet
(``reference_attn``, the closest training-free peer) on the same generation. Every prompt holds every
node, so ComfyUI's cache keeps the loaded checkpoint and the P3S Apply outputs; a run changes the seed,
which re-executes only the sampler and what follows it.

Runs are interleaved: after a one-step warm-up of every variant, each round runs every (size, variant)
once in a random order. A bench probe in the server (p3s_host/bench_probe) times each sampling and
measures the peak memory it added (see there). Per size: each variant's time over plain's in the same
round, as the median over rounds with the min-max spread; memory: the median peak added by the
sampling, and P3S's extra over plain's as a share of the U-Net's weights.

    python bench/overhead.py                                    # SD1.5, 256 px x 6 steps and 512 px x 4
    python bench/overhead.py --peer ~/.cache/p3s/peers/acn      # + Advanced-ControlNet Reference
    python bench/overhead.py --device cuda --family sdxl --sizes 1024 --steps 10

Attention: ``--attention pytorch`` (default) starts the server with ``--use-pytorch-cross-attention``, so
plain sampling uses torch's fused SDPA like P3S's read and like ComfyUI on a GPU; ComfyUI's CPU default
(sub-quadratic attention) would compare different kernels. Ends with one line per size:
``size=<px> per_step=<x> cached=<x> [peer=<x>] extra_MiB per_step=<m> cached=<m> ...``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # p3s_host; appended so ComfyUI's own top-level modules keep priority
sys.path.append(str(REPO / "bench"))
from p3s_host.server import TINY_REGISTRAR, Server, copy_into_input  # noqa: E402

PROBE = REPO / "p3s_host" / "bench_probe"
REFERENCE = REPO / "assets" / "two_dogs.png"
# The example workflow's points (example_workflows/p3s_two_dogs_sd15.json): the left dog, not the right one.
POINTS = json.dumps({"width": 512, "height": 384, "positive": [{"x": 150, "y": 230}, {"x": 100, "y": 240},
                                                               {"x": 160, "y": 150}],
                     "negative": [{"x": 372, "y": 232}]})
PROMPT = "a photo of a brown dog with a red collar sitting on a sandy beach at sunset, detailed fur"
NEGATIVE = "blurry, low quality, deformed, two dogs, text, watermark"
P3S_VARIANTS = {"per_step": "p3s_per_step", "cached": "p3s_cached"}


def base_nodes(ckpt: str, sizes: list[int], peer: bool) -> dict:
    """Every node but the sampler chain, shared by all prompts of the run (so ComfyUI keeps them cached)."""
    nodes = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["ckpt", 1]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": REFERENCE.name}},
        "pts": {"class_type": "P3SPointPicker", "inputs": {"image": ["img", 0], "points": POINTS}},
    }
    for mode, node in P3S_VARIANTS.items():
        nodes[node] = {"class_type": "P3SApply", "inputs": {
            "model": ["ckpt", 0], "vae": ["ckpt", 2], "reference": ["img", 0], "points": ["pts", 0],
            "weight": 1.0, "start_percent": 0.0, "end_percent": 1.0, "fill": "blur", "reference_mode": mode,
            "uncond_sees_reference": False}}
    for size in sizes:
        nodes[f"lat{size}"] = {"class_type": "EmptyLatentImage",
                               "inputs": {"width": size, "height": size, "batch_size": 1}}
    if peer:  # Advanced-ControlNet's Reference, set up as its README shows, with its default options
        nodes["acn_cn"] = {"class_type": "ACN_ReferenceControlNet", "inputs": {
            "reference_type": "reference_attn", "style_fidelity": 0.5, "ref_weight": 1.0}}
        for size in sizes:
            nodes[f"acn_pre{size}"] = {"class_type": "ACN_ReferencePreprocessor", "inputs": {
                "image": ["img", 0], "vae": ["ckpt", 2], "latent_size": [f"lat{size}", 0]}}
            nodes[f"acn_apply{size}"] = {"class_type": "ACN_AdvancedControlNetApply_v2", "inputs": {
                "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["acn_cn", 0],
                "image": [f"acn_pre{size}", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    return nodes


def prompt_for(base: dict, variant: str, size: int, steps: int, seed: int, decode: bool = True) -> dict:
    """The run's prompt: the shared nodes plus KSampler -> VAEDecode -> PreviewImage for ``variant``
    (``decode=False``: KSampler -> SaveLatent; the decode is never timed, only the wall time it costs)."""
    model = [P3S_VARIANTS[variant], 0] if variant in P3S_VARIANTS else ["ckpt", 0]
    pos, neg = ([f"acn_apply{size}", 0], [f"acn_apply{size}", 1]) if variant == "peer" else (["pos", 0], ["neg", 0])
    p = dict(base)
    p["ks"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": pos, "negative": neg, "latent_image": [f"lat{size}", 0], "denoise": 1.0}}
    if not decode:
        p["out"] = {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0], "filename_prefix": "bench/run"}}
        return p
    p["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}}
    p["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}}
    return p


def run_once(server: Server, prompt: dict, timeout: float) -> dict:
    """Queue ``prompt``; the probe's record of its one sampling, plus which nodes really ran."""
    server.request("POST", "/p3s_bench/clear", {})
    entry = server.run(prompt, timeout=timeout)
    records = server.get("/p3s_bench/samplings")
    if len(records) != 1:
        raise RuntimeError(f"expected one sampling per run, the probe saw {len(records)}: {records}")
    cached = set()
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_cached":
            cached.update(data.get("nodes", []))
    return {**records[0], "ran": sorted(set(prompt) - cached)}


def schedule(variants: list[str], sizes: list[int], rounds: int, rng: random.Random) -> list[tuple[int, int, str]]:
    """(round, size, variant) in run order: every round runs every pair once, in a random order."""
    out = []
    for r in range(rounds):
        pairs = [(size, v) for size in sizes for v in variants]
        rng.shuffle(pairs)
        out += [(r, size, v) for size, v in pairs]
    return out


def summarise(records: list[dict], variants: list[str], sizes: list[int]) -> dict:
    """Per size and variant: median seconds, ratio to plain (median, min, max over rounds), memory."""
    out = {}
    for size in sizes:
        by = {(r["round"], r["variant"]): r for r in records if r["size"] == size}
        rounds = sorted({k[0] for k in by})
        rows = {}
        for v in variants:
            ratios = [by[(i, v)]["seconds"] / by[(i, "plain")]["seconds"] for i in rounds]
            extra = [by[(i, v)]["added_peak_bytes"] - by[(i, "plain")]["added_peak_bytes"] for i in rounds]
            unet = by[(rounds[0], v)]["unet_bytes"]
            rows[v] = {"seconds": statistics.median(by[(i, v)]["seconds"] for i in rounds),
                       "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                       "added_peak_MiB": statistics.median(by[(i, v)]["added_peak_bytes"] for i in rounds) / 2**20,
                       "extra_MiB": statistics.median(extra) / 2**20,
                       "extra_of_unet": statistics.median(extra) / unet, "unet_MiB": unet / 2**20}
        out[size] = rows
    return out


def report(summary: dict, steps: dict, rounds: int) -> None:
    for size, rows in summary.items():
        print(f"\n{size}x{size} px, {steps[size]} steps, {rounds} rounds "
              f"(U-Net weights {next(iter(rows.values()))['unet_MiB']:.0f} MiB)")
        print(f"  {'variant':9s} {'median s':>9s} {'time / plain (min-max)':>24s} {'added peak MiB':>15s} "
              f"{'extra vs plain':>16s}")
        for v, r in rows.items():
            print(f"  {v:9s} {r['seconds']:9.2f} {r['ratio']:9.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) "
                  f"{r['added_peak_MiB']:15.0f} {r['extra_MiB']:+9.0f} MiB {100 * r['extra_of_unet']:+5.1f}%")
    for size, rows in summary.items():
        ratios = " ".join(f"{v}={r['ratio']:.2f}x" for v, r in rows.items() if v != "plain")
        extra = " ".join(f"{v}={r['extra_MiB']:+.0f}({100 * r['extra_of_unet']:+.1f}%)" for v, r in rows.items()
                         if v != "plain")
        print(f"size={size} steps={steps[size]} {ratios} extra_MiB {extra}")


def _checkpoint(family: str, models: Path) -> str:
    """The checkpoint's file name in ``models/checkpoints`` (written there when missing)."""
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    if family == "tiny":  # the tiny demo family: a smoke run of this bench in seconds
        from p3s_host import comfy_env
        comfy_env.import_comfy(cpu=True)
        from p3s_host import tiny_models
        path = models / "checkpoints" / "tiny_sd15.safetensors"
        if not path.is_file():
            tiny_models.make_checkpoint(str(path))
        return path.name
    import checkpoints
    path = checkpoints.checkpoint(family)
    link = models / "checkpoints" / path.name
    if not link.exists():
        link.symlink_to(path)
    return path.name


def _server(args, base: Path, models: Path) -> Server:
    extra = ["--use-pytorch-cross-attention"] if args.attention == "pytorch" else []
    nodes = [PROBE] + ([TINY_REGISTRAR] if args.family == "tiny" else []) + ([Path(args.peer)] if args.peer else [])
    # glibc returns freed blocks above this size to the kernel at once, so VmHWM - VmRSS is what a sampling
    # really added (with the default dynamic threshold, freed tensors stay in RSS and hide the next peak)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    if args.threads:  # torch reads it when the server starts
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    return Server(base, custom_nodes=nodes, models=models, cpu=args.device == "cpu", extra_args=extra,
                  timeout=600)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=("sd15", "sdxl", "tiny"), default="sd15")
    ap.add_argument("--sizes", default="256,512", help="generation sides in pixels, comma-separated")
    ap.add_argument("--steps", default="6,4", help="sampling steps per size (one value: the same for all)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (each runs every size and variant once)")
    ap.add_argument("--peer", default=None, help="a checkout of ComfyUI-Advanced-ControlNet: adds its Reference")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--attention", choices=("pytorch", "default"), default="pytorch")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of the server (default: torch's, one per core); 1 is steadier on a busy machine")
    ap.add_argument("--no-decode", action="store_true",
                    help="end each prompt at SaveLatent, not VAEDecode -> PreviewImage (saves wall time on a slow CPU)")
    ap.add_argument("--seed", type=int, default=0, help="of the run order")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument("--json", default=None, help="write every record and the summary here")
    ap.add_argument("--keep", default=None, help="server base directory to use and keep (default: a temp dir)")
    ap.add_argument("--models", default=str(Path.home() / ".cache" / "p3s" / "bench" / "models"),
                    help="models folder the server reads (the bench checkpoint is linked into its checkpoints/)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    """Why this is long: the run is one sequence (set up, warm up, interleaved rounds, report) that
    reads best in one place; each step is a call."""
    a = parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    steps_list = [int(s) for s in a.steps.split(",")]
    steps = {size: steps_list[min(i, len(steps_list) - 1)] for i, size in enumerate(sizes)}
    variants = ["plain", *P3S_VARIANTS] + (["peer"] if a.peer else [])
    base = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="p3s_overhead_"))
    models = Path(a.models)
    ckpt = _checkpoint(a.family, models)
    print(f"checkpoint {ckpt} ({a.family}), device {a.device}, attention {a.attention}, threads "
          f"{a.threads or 'default'}, sizes {steps}, "
          f"variants {variants}, load average {os.getloadavg()[0]:.1f}", flush=True)
    t0 = time.time()
    server = _server(a, base, models)
    records: list[dict] = []
    try:
        copy_into_input(base, REFERENCE)
        shared = base_nodes(ckpt, sizes, bool(a.peer))
        for size in sizes:  # warm-up: loads, the P3S Apply nodes, allocator growth; not timed
            for v in variants:
                run_once(server, prompt_for(shared, v, size, 1, 0, not a.no_decode), a.timeout)
        print(f"server up and warm in {time.time() - t0:.0f}s", flush=True)
        for i, (r, size, v) in enumerate(schedule(variants, sizes, a.rounds, random.Random(a.seed))):
            rec = run_once(server, prompt_for(shared, v, size, steps[size], 1000 + i, not a.no_decode), a.timeout)
            records.append({**rec, "round": r, "size": size, "variant": v})
            print(f"round {r} {size:5d}px {v:9s} {rec['seconds']:8.2f}s  added peak "
                  f"{rec['added_peak_bytes'] / 2**20:7.0f} MiB  ran {','.join(rec['ran'])}", flush=True)
    finally:
        server.stop()
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    summary = summarise(records, variants, sizes)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}; {time.time() - t0:.0f}s in all")
    report(summary, steps, a.rounds)
    if a.json:
        Path(a.json).write_text(json.dumps({"records": records, "summary": summary}, indent=1))
    return summary


if __name__ == "__main__":
    main()

"""README command 1: run example workflow (1) headless in a real ComfyUI server and save its images.

    bash scripts/run_example.sh                      # sets up the host, then runs this with the host's python
    python scripts/run_example.py [--out outputs] [--models DIR] [--checkpoint NAME] [--clip-vision NAME|auto|none]

What it does, in order:
1. starts a real ComfyUI server on a free 127.0.0.1 port with ``p3s_host.server.Server`` (the pack and the
   tiny-model registrar symlinked into a temporary base directory's custom_nodes,
   ``main.py --listen 127.0.0.1 --port N ...``), the same helper the test suite's server fixture uses;
2. copies the shipped reference ``assets/two_dogs.png`` into the server's input folder;
3. converts ``example_workflows/p3s_two_dogs_sd15.json`` (UI format) to an API prompt with the server's
   ``/object_info`` (scripts/ui_to_api.py) and maps its model file names;
4. runs it (POST /prompt, poll /history) and writes into ``--out`` (default ``outputs/``):
   ``selection_overlay.png`` (the Point Picker's preview), ``subject_mask.png``, ``subject_reference.png``
   (the subject-only reference P3S injects) and ``generated_*.png``; it prints their paths.

Models: with no models folder it writes tiny random-weight models (a few MB, seconds) and says so: the
generated image is then noise; the selection, the subject-only reference and the whole pipeline are real.
With ``--models DIR`` or ``$P3S_MODELS_DIR`` (a ComfyUI ``models`` folder) it uses
``checkpoints/v1-5-pruned-emaonly.safetensors`` (or ``--checkpoint NAME``) and, if present, a CLIP vision
model from ``clip_vision/`` for the selection features (``--clip-vision none`` to use the built-in ones).
The server runs with ``--cpu`` unless torch sees a GPU; a real SD1.5 on a CPU takes tens of seconds per step.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.append(str(REPO))  # p3s_host; appended so nothing here shadows another top-level module
from p3s_host import server as host_server  # noqa: E402
import ui_to_api  # noqa: E402

EXAMPLE = REPO / "example_workflows" / "p3s_two_dogs_sd15.json"
REFERENCE = REPO / "assets" / "two_dogs.png"
DEFAULT_CKPT = "v1-5-pruned-emaonly.safetensors"
CLIP_VISION_NAMES = ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "CLIP-ViT-L-14.safetensors",
                     "clip_vision_h.safetensors", "clip-vit-large-patch14.safetensors", "model.safetensors")
TINY_CKPT = "tiny_sd15.safetensors"
TINY_CLIP_VISION = "tiny_clip_vision.safetensors"
TINY_NOTICE = ("tiny random-weight models: images are noise; this demonstrates the pipeline "
               "(pass --models DIR or set P3S_MODELS_DIR for real images)")


def log(msg: str) -> None:
    print(f"[run_example] {msg}", flush=True)


def map_prompt(prompt: dict, checkpoint: str | None = None, clip_vision: str | None = None,
               latent: int | None = None, steps: int | None = None, adapter: str | None = None,
               prefix: str | None = None) -> dict:
    """A copy of an API prompt with model file names, latent size and steps replaced (None = keep)."""
    out = json.loads(json.dumps(prompt))
    for node in out.values():
        ct, inp = node["class_type"], node["inputs"]
        if ct == "CheckpointLoaderSimple" and checkpoint:
            inp["ckpt_name"] = checkpoint
        elif ct == "CLIPVisionLoader" and clip_vision:
            inp["clip_name"] = clip_vision
        elif ct == "P3SLoadAdapter" and adapter:
            inp["adapter_name"] = adapter
        elif ct == "EmptyLatentImage" and latent:
            inp["width"] = inp["height"] = latent
        elif ct in ("KSampler", "P3SSampler", "KSamplerAdvanced") and steps:
            inp["steps"] = steps
        elif ct == "SaveImage" and prefix:
            inp["filename_prefix"] = prefix
    return out


def add_clip_vision(prompt: dict, clip_name: str) -> dict:
    """Connect a CLIPVisionLoader to every P3SPointPicker / P3SApply of the prompt (selection features)."""
    out = json.loads(json.dumps(prompt))
    nid = str(max(int(k) for k in out) + 1)
    out[nid] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": clip_name},
                "_meta": {"title": "Load CLIP Vision"}}
    for node in out.values():
        if node["class_type"] in ("P3SPointPicker", "P3SApply"):
            node["inputs"]["clip_vision"] = [nid, 0]
    return out


def find_nodes(prompt: dict, class_type: str, title: str | None = None) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type
            and (title is None or v.get("_meta", {}).get("title") == title)]


def write_tiny_models(base: Path) -> None:
    """Tiny random checkpoint + CLIP vision in base/models (p3s_host/tiny_models.py, in a ComfyUI subprocess)."""
    code = ("import sys; sys.path.append(sys.argv[1]);"
            "from p3s_host.comfy_env import import_comfy; import_comfy(sys.argv[2], cpu=True);"
            "from p3s_host import tiny_models as t; t.make_checkpoint(sys.argv[3]); t.make_clip_vision_file(sys.argv[4])")
    subprocess.run([sys.executable, "-c", code, str(REPO), str(host_server.COMFYUI_DIR),
                    str(base / "models" / "checkpoints" / TINY_CKPT),
                    str(base / "models" / "clip_vision" / TINY_CLIP_VISION)],
                   check=True, cwd=str(host_server.COMFYUI_DIR))


def save_outputs(srv, prompt: dict, entry: dict, out: Path) -> list[Path]:
    outputs = entry["outputs"]
    written = []

    def grab(node_ids, stem, key="images"):
        n = 0
        for nid in node_ids:
            for img in outputs.get(nid, {}).get(key, []):
                p = out / (f"{stem}.png" if n == 0 else f"{stem}_{n:02d}.png")
                p.write_bytes(srv.view(img))
                written.append(p)
                n += 1

    grab(find_nodes(prompt, "P3SPointPicker"), "selection_overlay", key="p3s_overlay")
    grab(find_nodes(prompt, "PreviewImage", "Subject mask"), "subject_mask")
    grab(find_nodes(prompt, "PreviewImage", "Subject-only reference"), "subject_reference")
    gen = find_nodes(prompt, "SaveImage")
    n = 0
    for nid in gen:
        for img in outputs.get(nid, {}).get("images", []):
            p = out / f"generated_{n:02d}.png"
            p.write_bytes(srv.view(img))
            written.append(p)
            n += 1
    return written


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Run the P3S two-dogs example headless in a real ComfyUI server.")
    ap.add_argument("--out", default=str(REPO / "outputs"), help="where the images go (default: outputs/)")
    ap.add_argument("--models", default=os.environ.get("P3S_MODELS_DIR"),
                    help="a ComfyUI models folder (checkpoints/, clip_vision/); default $P3S_MODELS_DIR; "
                         "none = tiny random models")
    ap.add_argument("--checkpoint", default=None, help=f"checkpoint file name in models/checkpoints "
                                                       f"(default {DEFAULT_CKPT})")
    ap.add_argument("--clip-vision", default="auto",
                    help="CLIP vision file in models/clip_vision for the selection; auto = the first of the "
                         "common names that exists; none = the built-in features")
    ap.add_argument("--workflow", default=str(EXAMPLE), help="UI-format workflow to run (default: example 1)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the workflow's; tiny: 8)")
    ap.add_argument("--size", type=int, default=None, help="latent size in pixels (default: the workflow's; tiny: 256)")
    ap.add_argument("--cpu", action="store_true", help="force --cpu even when a GPU is visible")
    ap.add_argument("--keep", action="store_true", help="keep the temporary ComfyUI base directory")
    return ap


@dataclass
class Models:
    checkpoint: str
    steps: int | None
    size: int | None
    folder: Path | None = None        # a ComfyUI models folder; None: tiny models written into the base dir
    clip_vision: str | None = None


def choose_models(a: argparse.Namespace, base: Path) -> Models | None:
    """The tiny models (written into ``base``) or the user's folder; None (after saying why) when unusable."""
    if not a.models:
        log(f"NOTE: {TINY_NOTICE}")
        write_tiny_models(base)
        return Models(TINY_CKPT, a.steps or 8, a.size or 256)
    folder = Path(a.models).expanduser().resolve()
    checkpoint = a.checkpoint or DEFAULT_CKPT
    if not (folder / "checkpoints" / checkpoint).is_file():
        log(f"checkpoint {checkpoint!r} not found in {folder / 'checkpoints'}: put an SD1.5 checkpoint there "
            "or name yours with --checkpoint NAME")
        return None
    clip_name = None
    if a.clip_vision == "auto":
        clip_name = next((n for n in CLIP_VISION_NAMES if (folder / "clip_vision" / n).is_file()), None)
    elif a.clip_vision != "none":
        clip_name = a.clip_vision
    log(f"real models from {folder}: checkpoint {checkpoint}, "
        f"CLIP vision {clip_name or '(none: built-in selection features)'}")
    return Models(checkpoint, a.steps, a.size, folder, clip_name)


def run_workflow(srv: host_server.Server, workflow: Path, m: Models, out: Path) -> list[Path]:
    """Convert ``workflow`` with the server's /object_info, map the models, run it, save its images."""
    shutil.copy(REFERENCE, srv.base / "input" / REFERENCE.name)
    prompt = ui_to_api.convert(json.loads(workflow.read_text()), srv.get("/object_info"))
    prompt = map_prompt(prompt, checkpoint=m.checkpoint, latent=m.size, steps=m.steps, prefix="P3S/example")
    if m.clip_vision:
        prompt = add_clip_vision(prompt, m.clip_vision)
    (out / "prompt_api.json").write_text(json.dumps(prompt, indent=1))
    t1 = time.time()
    entry = srv.run(prompt, timeout=3600)
    log(f"workflow ran in {time.time() - t1:.1f}s")
    return save_outputs(srv, prompt, entry, out)


def _use_cpu(forced: bool) -> bool:
    try:
        import torch
        return forced or not torch.cuda.is_available()
    except ImportError:
        return True


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    t0 = time.time()
    if not (host_server.COMFYUI_DIR / "main.py").is_file():
        log(f"no ComfyUI at {host_server.COMFYUI_DIR}: run scripts/setup_host.sh first (or set COMFYUI_DIR)")
        return 2
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="p3s_example_"))
    try:
        host_server.make_layout(base)
        m = choose_models(a, base)
        if m is None:
            return 2
        cpu = _use_cpu(a.cpu)
        log(f"starting ComfyUI ({host_server.COMFYUI_DIR}) on 127.0.0.1{' with --cpu' if cpu else ''}")
        with host_server.Server(base, models=m.folder, cpu=cpu, timeout=180) as srv:
            log(f"server up at {srv.url} after {time.time() - t0:.1f}s")
            try:
                files = run_workflow(srv, Path(a.workflow), m, out)
            except host_server.ExecutionFailed as e:
                log(f"the workflow failed: {e}\n(server log: {srv.log_path})")
                return 1
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    for p in files:
        print(p)
    print(out / "prompt_api.json")
    if m.folder is None:
        log(f"NOTE: {TINY_NOTICE}")
    log(f"done in {time.time() - t0:.1f}s; {len(files)} images in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

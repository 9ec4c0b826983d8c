"""Hostile inputs that arrive through the real server: crafted adapter files (refused before the server
allocates anything, measured in the server process) and a NaN weight (a P3S message naming the input).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import graphs
import scenes
from host import ExecutionFailed

pytestmark = pytest.mark.server
SIDE = 64


def _graph(adapter: str | None, points: str, weight: float = 1.0, seed: int = 3) -> dict:
    p = graphs.prompt_head("tiny_sd15.safetensors", "p3s_hostile_ref.png", points, SIDE)
    p.update({
        "cv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "tiny_clip_vision.safetensors"}},
        "apply": {"class_type": "P3SApply", "inputs": {"model": ["ckpt", 0], "vae": ["ckpt", 2],
                                                       "reference": ["ref", 0], "points": ["pick", 0],
                                                       "weight": weight, "start_percent": 0.0, "end_percent": 1.0,
                                                       "clip_vision": ["cv", 0]}},
        "sample": {"class_type": "KSampler", "inputs": {"model": ["apply", 0], "positive": ["pos", 0],
                                                        "negative": ["neg", 0], "latent_image": ["empty", 0],
                                                        "seed": seed, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
                                                        "scheduler": "normal", "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": "hostile/out"}},
    })
    if adapter:
        p["load"] = {"class_type": "P3SLoadAdapter", "inputs": {"adapter_name": adapter}}
        p["apply"]["inputs"]["adapter"] = ["load", 0]
    return p


@pytest.fixture(scope="module")
def points(server):
    image, _, centers = scenes.two_subjects(SIDE, SIDE, seed=4)
    scenes.save_png(image, server.base / "input" / "p3s_hostile_ref.png")
    return json.dumps({"width": SIDE, "height": SIDE, "positive": [{"x": centers[0][0], "y": centers[0][1]}]})


def _memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def _valid_adapter(host, folder: Path) -> Path:
    """A real (fresh) adapter for the tiny SD1.5 checkpoint and the tiny CLIP vision model."""
    adapter_mod, models = host.pack("p3s_core.adapter"), host.pack("nodes.models")
    with torch.inference_mode():
        model = host.nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[0]
    spec = adapter_mod.AdapterSpec(family="sd15", rank=4, alpha=4.0, clip_width=64, ctx_dim=models.context_dim(model),
                                   layers=models.transformer_layers(model))
    path = folder / "p3s_valid.safetensors"
    adapter_mod.save_adapter(adapter_mod.P3SAdapter(spec), path)
    return path


CRAFTED = {  # name -> (header changes, what the refusal says)
    "queries_50m": ({"num_queries": "50000000"}, "num_queries=50000000 is above the limit"),
    "rank_1m": ({"rank": "1000000"}, "rank=1000000 is above the limit"),
    "width_1g": ({"layers": "WIDE"}, "bad layer"),
    "nested": ({"layers": "[" * 20000 + "]" * 20000}, "nested too deeply"),
    "mismatch": ({"num_queries": "1000"}, "tensors disagree with its P3S metadata"),
}


def test_crafted_adapters_are_refused_before_the_server_allocates(server, host, points):
    folder = server.base / "models" / "p3s"
    valid = _valid_adapter(host, folder)
    tensors = load_file(str(valid))
    with safe_open(str(valid), framework="pt") as f:
        meta = f.metadata()
    for name, (changes, _) in CRAFTED.items():
        layers = json.dumps([[k, 10 ** 9] for k, _ in json.loads(meta["layers"])])
        crafted = {**meta, **{k: (layers if v == "WIDE" else v) for k, v in changes.items()}}
        save_file(tensors, str(folder / f"crafted_{name}.safetensors"), metadata=crafted)
    server.run(_graph("p3s_valid.safetensors", points))  # loads the models once (cached by the server after)
    pid = server.proc.pid
    for name, (_, says) in CRAFTED.items():
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        before = _memory_kb(pid)
        with pytest.raises(ExecutionFailed) as info:
            server.run(_graph(f"crafted_{name}.safetensors", points))
        after = _memory_kb(pid)
        msg = str(info.value)
        assert msg.startswith("P3S: ") and says in msg and f"crafted_{name}.safetensors" in msg, msg
        growth_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
        print(f"{name}: peak RSS growth {growth_mb:.1f} MB")
        assert growth_mb < 50, (name, growth_mb)
    assert server.proc.poll() is None  # the server is alive and still samples with the valid adapter
    server.run(_graph("p3s_valid.safetensors", points, seed=4))


def test_a_nan_weight_names_the_weight_input(server, points):
    with pytest.raises(ExecutionFailed, match=r"^P3S: weight=nan is invalid: give a finite number"):
        server.run(_graph(None, points, weight=float("nan")))

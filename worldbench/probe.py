"""A quick look (not the benchmark) at whether training-free P3S moves the clicked subject's identity
into the generated image on the world model: a few validation cases, a few seeds, plain sampling
versus P3S Apply (the pack's node, loaded by ComfyUI's custom-node loader) with the click and with no
selection (mask = whole image), every output read by the reader.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from . import world
from .config import WorldConfig
from .pipeline import load_reader
from .progress import progress
from .quality import WorldHost, save_grid, wilson

REPO = Path(__file__).resolve().parents[1]


def load_pack(nodes):
    """The P3S pack loaded through ComfyUI's own custom-node loader (once per process)."""
    if "P3SApply" not in nodes.NODE_CLASS_MAPPINGS:
        from p3s_host.comfy_env import load_custom_node
        load_custom_node(REPO)
    return nodes.NODE_CLASS_MAPPINGS


def _points(case: world.Case):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from p3s_core.points import PointSet
    return PointSet.from_pixels(positive=[case.click], width=case.reference.image.shape[1],
                                height=case.reference.image.shape[0])


def transfer_probe(cfg: WorldConfig, count: int = 8, seeds: int = 3, split: str = "val", weight: float = 1.0,
                   mode: str = "per_step", steps: int = 20, cfg_scale: float = 6.0, grid_path=None) -> dict:
    host = WorldHost(cfg)
    mapping = load_pack(host.nodes)
    apply = mapping["P3SApply"]
    reader = load_reader(cfg)
    variants = ("plain", "p3s", "noselect")
    tally = {v: {"clicked": 0, "leak": 0, "prompt": 0, "colour": 0, "class": 0, "n": 0} for v in variants}
    rows = []
    for k in progress(range(count), desc="probe"):
        case = world.test_case(split, k, cfg.side)
        ref = torch.from_numpy(case.reference.image)[None].float() / 255
        with torch.inference_mode():
            picked = apply.execute(model=host.model, vae=host.vae, reference=ref, weight=weight, start_percent=0.0,
                                   end_percent=1.0, points=_points(case), reference_mode=mode).args[0]
            whole = apply.execute(model=host.model, vae=host.vae, reference=ref, weight=weight, start_percent=0.0,
                                  end_percent=1.0, mask=torch.ones(1, *ref.shape[1:3]), reference_mode=mode).args[0]
        row = [ref.expand(seeds, -1, -1, -1)]
        for v, model in zip(variants, (host.model, picked, whole)):
            imgs = host.sample(case.prompt, 100 + k, seeds, steps, cfg_scale, model=model)
            row.append(imgs)
            for rd in reader.read_batch(imgs):
                t = tally[v]
                t["n"] += 1
                t["prompt"] += rd.scene == case.prompt_scene
                m = rd.main
                if m is None:
                    continue
                t["clicked"] += m.identity == case.identity
                t["leak"] += m.identity in case.lookalikes
                t["colour"] += m.colour == case.identity.colour
                t["class"] += m.cls == case.identity.cls
        rows.append(torch.stack(row, 1).flatten(0, 1))
    if grid_path is not None:
        save_grid(torch.cat(rows), grid_path, 1 + len(variants))
    out = {"cases": count, "seeds": seeds, "split": split, "weight": weight, "mode": mode}
    for v, t in tally.items():
        n = t.pop("n")
        out[v] = {k: {"share": c / max(1, n), "ci95": wilson(c, n)} for k, c in t.items()}
        out[v]["n"] = n
    return out

"""Quality gate of the world model, through ComfyUI's own nodes in this process:
CheckpointLoaderSimple -> CLIPTextEncode -> EmptyLatentImage -> KSampler -> VAEDecode -> the reader.

For every (class, scene) prompt ("a dog on a beach"), ``per_prompt`` samples: the share where the reader
finds a subject of the prompted class, the share whose scene is the prompted one, how many subjects
it finds, and how diverse the identities are (a world model that always draws the same identity would
make every transfer figure meaningless). Also a diagnostic: prompts that *name* an identity.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from . import comfy_env, world
from .config import WorldConfig
from .pipeline import files, load_reader
from .progress import progress


class WorldHost:
    """The world model loaded through ComfyUI's stock loader nodes, sampled with its stock KSampler."""

    def __init__(self, cfg: WorldConfig, gpu: bool = False):
        comfy_env.setup(gpu)
        import folder_paths
        self.cfg, self.f = cfg, files(cfg)
        if not self.f.ready():
            raise SystemExit(f"worldbench: the world model {self.f.dir} is not trained: "
                             f"run {cfg.train_command()}")
        self.nodes = comfy_env.import_nodes()
        for kind in ("checkpoints", "clip_vision"):
            if str(self.f.dir) not in folder_paths.get_folder_paths(kind):
                folder_paths.add_model_folder_path(kind, str(self.f.dir))
        with torch.inference_mode():
            self.model, self.clip, self.vae = self.nodes.CheckpointLoaderSimple().load_checkpoint(
                self.f.checkpoint.name)[:3]
        self._cond: dict[str, list] = {}

    def cond(self, text: str) -> list:
        if text not in self._cond:
            with torch.inference_mode():
                self._cond[text] = self.nodes.CLIPTextEncode().encode(self.clip, text)[0]
        return self._cond[text]

    def sample(self, text: str, seed: int, batch: int = 1, steps: int = 20, cfg: float = 6.0,
               sampler: str = "euler", scheduler: str = "normal", model=None, negative: str = "") -> torch.Tensor:
        """[batch, S, S, 3] images in 0..1."""
        with torch.inference_mode():
            latent = self.nodes.EmptyLatentImage().generate(self.cfg.side, self.cfg.side, batch)[0]
            out = self.nodes.common_ksampler(model or self.model, seed, steps, cfg, sampler, scheduler,
                                             self.cond(text), self.cond(negative), latent)[0]
            return self.nodes.VAEDecode().decode(self.vae, out)[0][..., :3].float().cpu()


def _entropy(counter: Counter, k: int) -> float:
    n = sum(counter.values())
    if n == 0:
        return 0.0
    h = -sum(c / n * math.log(c / n) for c in counter.values() if c)
    return h / math.log(k)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a share k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def quality_gate(cfg: WorldConfig, per_prompt: int = 10, steps: int = 20, cfg_scale: float = 6.0, seed: int = 0,
                 attribute_prompts: int = 12, grid_path=None, gpu: bool = False) -> dict:
    host = WorldHost(cfg, gpu)
    reader = load_reader(cfg)
    cls_hit = main_hit = scene_hit = n = 0
    counts: Counter = Counter()
    colours: Counter = Counter()
    patterns: Counter = Counter()
    collars: Counter = Counter()
    idents: Counter = Counter()
    per_scene = {s: [0, 0] for s in world.SCENES}
    grid = []
    prompts = [(c, s) for c in world.CLASSES for s in world.SCENES]
    for j, (c, s) in enumerate(progress(prompts, desc="quality: prompts")):
        imgs = host.sample(world.prompt(c, s), seed + j, per_prompt, steps, cfg_scale)
        grid.append(imgs)
        for rd in reader.read_batch(imgs):
            n += 1
            counts[len(rd.subjects)] += 1
            cls_hit += any(f.cls == c for f in rd.subjects)
            scene_hit += rd.scene == s
            per_scene[s][0] += rd.scene == s
            per_scene[s][1] += 1
            if rd.main is not None:
                main_hit += rd.main.cls == c
                colours[rd.main.colour] += 1
                patterns[rd.main.pattern] += 1
                collars[rd.main.collar] += 1
                idents[rd.main.identity.key] += 1
    out = {"samples": n, "steps": steps, "cfg": cfg_scale, "sampler": "euler/normal",
           "class_found": cls_hit / n, "class_found_ci": wilson(cls_hit, n),
           "main_subject_class": main_hit / n, "scene": scene_hit / n, "scene_ci": wilson(scene_hit, n),
           "scene_by_prompt": {s: v[0] / max(1, v[1]) for s, v in per_scene.items()},
           "subjects_found": {str(k): v / n for k, v in sorted(counts.items())},
           "colour_hist": dict(colours), "pattern_hist": dict(patterns), "collar_hist": dict(collars),
           "colour_entropy": _entropy(colours, len(world.COLOURS)),
           "pattern_entropy": _entropy(patterns, len(world.PATTERNS)),
           "collar_entropy": _entropy(collars, len(world.COLLARS)),
           "distinct_identities": len(idents), "most_common_identity_share": (idents.most_common(1)[0][1] / n)
           if idents else 0.0}
    out.update(_attribute_prompts(host, reader, attribute_prompts, steps, cfg_scale, seed))
    if grid_path is not None:
        save_grid(torch.cat(grid), grid_path, per_prompt)
    return out


def _attribute_prompts(host: WorldHost, reader, count: int, steps: int, cfg_scale: float, seed: int) -> dict:
    """Diagnostic: 'a red spotted dog with a green collar on a beach' -> is that identity drawn?"""
    if count <= 0:
        return {}
    rng = world.rng_for("probe", 0)
    ok = {"cls": 0, "colour": 0, "pattern": 0, "collar": 0, "identity": 0}
    total = 0
    for k in range(count):
        ident = world.ALL_IDENTITIES[int(rng.integers(len(world.ALL_IDENTITIES)))]
        scene = world.SCENES[int(rng.integers(len(world.SCENES)))]
        imgs = host.sample(f"{ident.describe()} {world.SCENE_PHRASES[scene]}", seed + 1000 + k, 4, steps, cfg_scale)
        for rd in reader.read_batch(imgs):
            total += 1
            m = rd.main
            if m is None:
                continue
            for a in ("cls", "colour", "pattern", "collar"):
                ok[a] += getattr(m, a) == getattr(ident, a)
            ok["identity"] += m.identity == ident
    return {f"named_identity_{k}": v / max(1, total) for k, v in ok.items()}


def save_grid(images: torch.Tensor, path, columns: int, scale: int = 2) -> None:
    from PIL import Image
    n, s = images.shape[0], images.shape[1]
    rows = math.ceil(n / columns)
    canvas = np.full((rows * (s + 2), columns * (s + 2), 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[r * (s + 2):r * (s + 2) + s, c * (s + 2):c * (s + 2) + s] = \
            (images[i].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST).save(path)

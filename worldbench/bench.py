"""The transfer benchmark (issue #10, item 4): does the *clicked* subject, not its look-alike, reach a new scene?

For N cases of a split (``world.test_case``: a reference with 2-3 look-alikes, a click on one, a prompt
naming another scene and no attribute) and K samples each, every variant is generated **through a real
ComfyUI server** (``p3s_host.server.Server`` with the P3S pack and ``worldbench/world_registrar`` as custom
nodes, the world checkpoint / CLIP vision / adapters in its models folder) with the API prompts a user
would queue: LoadImage -> P3S Point Picker -> P3S Apply -> KSampler or P3S Sampler -> VAEDecode ->
SaveImage. The images come back over HTTP (``/view``) and the reader reads them:

- ``clicked``: the main subject (the largest the reader finds) has the clicked subject's class and body
  colour (every look-alike of a case has another colour: ``world.test_case``);
- ``leak``: it has a look-alike's body colour;
- ``clicked_full`` / ``leak_full``: the same with all four identity attributes (class, colour, pattern,
  collar). Pattern and collar do not survive the 64 px world's autoencoder well (the reader reads them at
  0.58 and 0.68 through a round trip), so these are capped near 0.4 by the world model, not by P3S;
- ``prompt``: the scene is the prompt's (``ref_scene``: it is the reference's scene instead);

each with a 95 % Wilson interval over all N x K samples. The K samples of a case are one batch of K
latents from one seed (ComfyUI draws a different noise per batch item), the same seed for every variant,
so variants are compared on the same noise.

The "best training-free" variant of the last line is picked on the ``val`` split (``--split val`` writes
its pick into the world cache, one per steps / cfg / weight); a ``test`` run reads the pick made at its
own settings and never tunes anything on its own cases.
"""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import world
from .breakdown import drawable_split, drawable_table
from .config import WorldConfig
from .pipeline import Clock, files, load_reader
from .progress import progress
from .paired import paired_difference, paired_table
from .quality import wilson
from .settings import REPO, AdapterSettings, RunSettings

log = logging.getLogger("P3S")
REGISTRAR = Path(__file__).resolve().parent / "world_registrar"
PRESETS = ("constant", "ramp_up", "ramp_down", "cosine", "step")  # p3s_core.schedule.PRESETS (checked in tests)
METRICS = ("clicked", "leak", "prompt", "ref_scene", "clicked_full", "leak_full", "class", "found")
PICK_FILE = "bench_val_pick.json"
NOT_TRAINING_FREE = ("plain", "named", "noselect")  # never picked as the best training-free P3S mode
DEFAULT_VARIANT = "cached"  # P3S Apply's default reference_mode with KSampler (nodes/patch.py DEFAULT_MODE)


@dataclass(frozen=True)
class Variant:
    """One way of generating: no P3S, or P3S Apply with these settings, sampled by KSampler or P3S Sampler."""
    name: str
    p3s: bool = True
    full_mask: bool = False  # P3S Apply gets a whole-image mask (SolidMask) instead of the clicks
    mode: str = "per_step"
    uncond: bool = False
    schedule: str | None = None  # P3S Sampler preset (None: stock KSampler)
    adapter: str | None = None  # adapter file name in models/p3s (with the world CLIP vision)
    training_free: bool = True
    apply: dict = field(default_factory=dict)  # more P3S Apply inputs (weight, ...)
    named: bool = False  # the prompt names the clicked identity ('a red spotted dog with a green collar ...')


def adapter_mode(path: Path) -> str:
    """The reference_mode an adapter was trained with (the trainer's ``p3s_reference_mode`` metadata; adapters
    from before that option were trained per_step), so the benchmark samples with it the way it was trained."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("p3s_reference_mode", "per_step")


def variants(adapters: dict[str, str] | None = None, weight: float = 1.0,
             modes: dict[str, str] | None = None, window: tuple[float, float] = (0.0, 1.0),
             fill: str = "blur", adapter_schedules: bool = False) -> list[Variant]:
    """Every variant of the issue: plain, no selection, per_step, cached, uncond on, each P3S Sampler
    preset, and one per trained adapter (``adapters``: variant name -> adapter file name; ``modes``: variant
    name -> the reference_mode it samples with, default per_step). ``weight``, ``window`` (P3S Apply's
    start_percent, end_percent) and ``fill`` go to every P3S variant. ``adapter_schedules``: also each
    preset over each adapter (``adapter_sampler_ramp_up``: the schedule for adapter users; only when named)."""
    w = {"weight": weight, "start_percent": float(window[0]), "end_percent": float(window[1]), "fill": fill}
    # named: no P3S, the clicked identity written into the prompt (what a user without P3S would try; the
    # world model's own colour control, the yardstick for what any identity transfer can show here)
    out = [Variant("plain", p3s=False), Variant("named", p3s=False, named=True),
           Variant("noselect", full_mask=True, apply=w),
           Variant("per_step", apply=w), Variant("cached", mode="cached", apply=w),
           Variant("uncond_on", uncond=True, mode=DEFAULT_VARIANT, apply=w)]
    # the presets and uncond on, over P3S Apply's default mode: what a user gets by changing only that setting
    out += [Variant(f"sampler_{p}", schedule=p, mode=DEFAULT_VARIANT, apply=w) for p in PRESETS]
    trained = [(name, fname, (modes or {}).get(name, "per_step")) for name, fname in (adapters or {}).items()]
    out += [Variant(name, adapter=fname, training_free=False, apply=w, mode=m) for name, fname, m in trained]
    if adapter_schedules:
        out += [Variant(f"{name}_sampler_{p}", adapter=fname, schedule=p, training_free=False, apply=w, mode=m)
                for name, fname, m in trained for p in PRESETS]
    return out


# ---- the API prompt ------------------------------------------------------------------------------------
def points_json(case: world.Case) -> str:
    """The Point Picker's ``points`` widget value for the case's click."""
    h, w = case.reference.image.shape[:2]
    x, y = case.click
    return json.dumps({"width": w, "height": h, "positive": [{"x": x, "y": y}], "negative": []})


def named_prompt(case: world.Case) -> str:
    """The case's prompt with the clicked identity named: 'a red spotted dog with a green collar on a beach'."""
    return f"{case.identity.describe()} {world.SCENE_PHRASES[case.prompt_scene]}"


def api_prompt(v: Variant, case: world.Case, image_name: str, ckpt: str, clip_vision: str, seed: int,
               batch: int, steps: int = 20, cfg: float = 6.0, prefix: str = "bench") -> dict:
    """The ComfyUI API prompt of variant ``v`` on ``case`` (what a user's graph queues)."""
    side = case.reference.image.shape[0]
    sample = {"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal",
              "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0,
              "model": ["1", 0]}
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": named_prompt(case) if v.named else case.prompt,
                                                         "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": side, "height": side, "batch_size": batch}},
        "5": {"class_type": "KSampler", "inputs": sample},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": f"{prefix}_{v.name}"}},
    }
    if not v.p3s:
        return g
    g["10"] = {"class_type": "LoadImage", "inputs": {"image": image_name}}
    apply = {"model": ["1", 0], "vae": ["1", 2], "reference": ["10", 0], "weight": 1.0, "start_percent": 0.0,
             "end_percent": 1.0, "fill": "blur", "reference_mode": v.mode, "uncond_sees_reference": v.uncond,
             **v.apply}
    if v.full_mask:
        g["11"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": side, "height": side}}
        apply["mask"] = ["11", 0]
    else:
        g["11"] = {"class_type": "P3SPointPicker", "inputs": {"image": ["10", 0], "points": points_json(case)}}
        apply["points"] = ["11", 0]
    if v.adapter:
        g["13"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": clip_vision}}
        g["14"] = {"class_type": "P3SLoadAdapter", "inputs": {"adapter_name": v.adapter}}
        apply.update(clip_vision=["13", 0], adapter=["14", 0])
    g["12"] = {"class_type": "P3SApply", "inputs": apply}
    sample["model"] = ["12", 0]
    if v.schedule:
        g["5"] = {"class_type": "P3SSampler", "inputs": {**sample, "schedule": v.schedule, "weight_low": 0.25,
                                                         "weight_high": 1.0}}
    return g


# ---- scoring ---------------------------------------------------------------------------------------------
class Tally:
    """Counts per metric over the samples of one variant."""

    def __init__(self):
        self.n = 0
        self.hits = {m: 0 for m in METRICS}

    def add(self, reading, case: world.Case) -> dict:
        m = reading.main
        got = {"prompt": reading.scene == case.prompt_scene, "ref_scene": reading.scene == case.reference.scene.scene,
               "found": m is not None,
               "clicked": m is not None and (m.cls, m.colour) == (case.identity.cls, case.identity.colour),
               "leak": m is not None and any((m.cls, m.colour) == (o.cls, o.colour) for o in case.lookalikes),
               "clicked_full": m is not None and m.identity == case.identity,
               "leak_full": m is not None and m.identity in case.lookalikes,
               "class": m is not None and m.cls == case.identity.cls,
               "read": None if m is None else list(m.identity.key)}  # what was read: for confusion tables
        self.n += 1
        for k in METRICS:
            self.hits[k] += bool(got[k])
        return got

    def summary(self) -> dict:
        return {"n": self.n, **{k: {"share": c / max(1, self.n), "ci95": list(wilson(c, self.n))}
                                for k, c in self.hits.items()}}


def share(res: dict, variant: str, metric: str) -> float | None:
    v = res["variants"].get(variant)
    return None if v is None else v[metric]["share"]


CLASS_MARGIN = 0.05  # a variant whose class share falls more than this below plain's is never picked


def keeps_class(run: dict, variant: str) -> bool:
    """Whether ``variant`` keeps the subject's class: its ``class`` share at most ``CLASS_MARGIN`` below plain's
    in the same run (runs without plain or without the class share: yes). A broken image can still hold a blob
    of the clicked colour, which ``clicked`` counts, so picks (weights and training-free modes) skip such
    variants."""
    v, plain = run["variants"].get(variant), run["variants"].get("plain")
    if not v or not plain or "class" not in v or "class" not in plain:
        return True
    return v["class"]["share"] >= plain["class"]["share"] - CLASS_MARGIN - 1e-9


def pick_score(summary: dict) -> float:
    """How a variant is ranked on the validation split: identity in, look-alike out, prompt obeyed."""
    return summary["clicked"]["share"] - summary["leak"]["share"] + summary["prompt"]["share"]


# ---- adapters ----------------------------------------------------------------------------------------------
# A benchmark adapter on the mid world trains for an hour or more on 2 CPU cores: it writes a checkpoint this
# often, and a later run with the same settings resumes from the newest one (a killed or timed-out session
# loses at most this many steps).
CHECKPOINT_EVERY = 200


def latest_checkpoint(adapter: Path) -> Path | None:
    """The newest ``NAME.stepNNNNNN.pt`` the trainer wrote next to the adapter file ``adapter``, or None."""
    found = sorted(adapter.parent.glob(f"{adapter.stem}.step*.pt"))
    return found[-1] if found else None


def train_adapters(cfg: WorldConfig, settings: AdapterSettings, threads: int = 1) -> dict[str, Path]:
    """Adapters trained by ``scripts/train_adapter.py --custom-node worldbench/world_registrar`` on an export of
    ``settings.count`` train-split pairs (train identities only), one per ACL weight; cached in the world folder
    under a name that holds every setting (``AdapterSettings.file_name``)."""
    s = settings.resolved()
    from .export import export
    f = files(cfg)
    data = f.dir / f"adapter_data_{s.count}"
    if not (data / "manifest.jsonl").is_file() or len((data / "manifest.jsonl").read_text().splitlines()) != s.count:
        export(data, s.count, "train", cfg.side)
    out = {}
    for w, name in zip(s.acl_weights, s.variant_names()):
        path = f.dir / "adapters" / s.file_name(w)
        if not path.is_file():
            _train_one(cfg, s, w, path, data, threads)
        out[name] = path
    return out


def _train_one(cfg: WorldConfig, s: AdapterSettings, acl: float, path: Path, data: Path, threads: int) -> None:
    """Trains one adapter into ``path``, resuming from its newest checkpoint; the adapter's JSON next to it
    records the time, the command and the logged loss terms."""
    f = files(cfg)
    path.parent.mkdir(exist_ok=True)
    resume = latest_checkpoint(path)
    cmd = [sys.executable, str(REPO / "scripts" / "train_adapter.py"), "--custom-node", str(REGISTRAR),
           "--checkpoint", str(f.checkpoint), "--clip-vision", str(f.clip_vision), "--data", str(data),
           "--output", str(path), "--resolution", str(cfg.side), "--cpu", *s.trainer_args(acl),
           "--checkpoint-every", str(CHECKPOINT_EVERY), "--no-progress"] \
        + (["--resume", str(resume)] if resume else [])
    log.info("worldbench: training an adapter (ACL weight %g, %d steps%s)", acl, s.steps,
             f", resumed from {resume.name}" if resume else "")
    t0 = time.time()
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=thread_env(threads))
    if run.returncode != 0 or not path.is_file():
        raise RuntimeError(f"adapter training failed ({run.returncode}):\n{run.stdout[-3000:]}"
                           f"\n{run.stderr[-3000:]}")
    for old in path.parent.glob(f"{path.stem}.step*.pt"):  # done: the adapter file replaces them
        old.unlink()
    (path.with_suffix(".json")).write_text(json.dumps({"minutes": (time.time() - t0) / 60, "cmd": cmd[1:],
                                                       "resumed_from": resume.name if resume else None,
                                                       **loss_terms(run.stdout + run.stderr)}, indent=1))


def loss_terms(log_text: str) -> dict:
    """The trainer's logged loss and ACL term (``P3S: step i/n loss L acl A``), medians over the last half of
    the run: how large the Attention Consistency Loss is next to the diffusion loss on this model."""
    import re
    rows = [(float(m[1]), float(m[2])) for m in re.finditer(r"step \d+/\d+ loss ([-\d.e+naif]+) acl ([-\d.e+naif]+)",
                                                            log_text)]
    rows = rows[len(rows) // 2:]
    if not rows:
        return {}
    med = lambda xs: float(np.nanmedian(xs))  # noqa: E731
    acl = med([r[1] for r in rows]) if any(np.isfinite(r[1]) for r in rows) else None  # nan: not recorded (weight 0)
    return {"loss_median": med([r[0] for r in rows]), "acl_median": acl, "log_rows": len(rows)}


# ---- the run --------------------------------------------------------------------------------------------------
def thread_env(threads: int) -> dict[str, str]:
    """Environment of the server and trainer subprocesses: ``threads`` torch/OpenMP threads. On a shared
    2-core machine one thread is many times faster for these small models than two that wait on each
    other (measured: 0.1 s versus 2 s per sampling step of the quick model under a load of 8)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _server(cfg: WorldConfig, base: Path, adapters: dict[str, Path], threads: int):
    from p3s_host.server import Server, make_layout
    f = files(cfg)
    make_layout(base, custom_nodes=(REGISTRAR,))
    links = [("checkpoints", f.checkpoint), ("clip_vision", f.clip_vision)]
    links += [("p3s", p) for p in adapters.values()]
    for kind, src in links:
        (base / "models" / kind).mkdir(parents=True, exist_ok=True)
        dst = base / "models" / kind / src.name
        if not dst.exists():
            dst.symlink_to(src)
    saved = dict(os.environ)
    os.environ.update(thread_env(threads))  # the server subprocess inherits this process's environment
    try:
        return Server(base, custom_nodes=(REGISTRAR,), timeout=600)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _fetch(srv, entry: dict) -> np.ndarray:
    from PIL import Image
    imgs = entry["outputs"]["7"]["images"]
    return np.stack([np.asarray(Image.open(io.BytesIO(srv.view(i))).convert("RGB")) for i in imgs])


def check_variant_names(only: tuple[str, ...], adapter_names: list[str] | dict) -> None:
    """Refuses a name in ``only`` (``--variants``) that no variant of a run with these adapters has, listing the
    names, before anything trains or runs (a typo would otherwise sample nothing for that name in silence)."""
    names = [v.name for v in variants({k: "" for k in adapter_names}, adapter_schedules=True)]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ValueError(f"--variants: no variant named {', '.join(unknown)} in this run; the names are "
                         f"{', '.join(names)}" + ("" if adapter_names else " (the adapter variants need --adapter-steps)"))


def run_variants(adapters: dict[str, Path], run: RunSettings) -> list[Variant]:
    """The variants a run samples: all (``run.only`` empty) or those named in it (checked first)."""
    check_variant_names(run.only, adapters)
    schedules = any(n.startswith("adapter") and "_sampler_" in n for n in run.only)  # named in --variants only
    return [v for v in variants({k: p.name for k, p in adapters.items()}, run.weight,
                                {k: adapter_mode(p) for k, p in adapters.items()}, run.window, run.fill, schedules)
            if not run.only or v.name in run.only]


def run_bench(cfg: WorldConfig, run: RunSettings, adapters: dict[str, Path] | None = None,
              work: Path | None = None, grid_cases: int = 6, threads: int = 1) -> dict:
    """Runs every variant on ``run.cases`` cases of ``run.split`` x ``run.seeds`` samples through a real
    server. Returns the results (per variant: n and each metric's share and 95 % interval) and the grid."""
    import tempfile
    adapters = adapters or {}
    vs = run_variants(adapters, run)
    cases, seeds, split = run.cases, run.seeds, run.split
    reader = load_reader(cfg)
    f = files(cfg)
    tally = {v.name: Tally() for v in vs}
    seconds = {v.name: 0.0 for v in vs}
    per_case, grid = [], []
    clock = Clock()
    with tempfile.TemporaryDirectory(prefix="worldbench_", dir=work) as tmp:
        srv = _server(cfg, Path(tmp) / "comfy", adapters, threads)
        try:
            for k in progress(range(cases), desc=f"bench {split}"):
                case = world.test_case(split, k, cfg.side)
                from PIL import Image
                name = f"case_{split}_{k:04d}.png"
                Image.fromarray(case.reference.image).save(Path(tmp) / "comfy" / "input" / name)
                row = {"case": k, "prompt": case.prompt, "identity": list(case.identity.key),
                       "lookalikes": [list(i.key) for i in case.lookalikes], "variants": {}}
                # control: the reader on the reference itself (a clean render) finds the clicked identity
                ref_read = {f.identity for f in reader.read(case.reference.image).subjects}
                row["reference_read"] = {"clicked": case.identity in ref_read,
                                         "all": ref_read == set(case.reference.identities)}
                images = {}
                for v in vs:
                    t0 = time.time()
                    entry = srv.run(api_prompt(v, case, name, f.checkpoint.name, f.clip_vision.name, 1000 + k, seeds,
                                               run.steps, run.cfg_scale), timeout=1800)
                    imgs = _fetch(srv, entry)
                    seconds[v.name] += time.time() - t0
                    images[v.name] = imgs[0]
                    row["variants"][v.name] = [tally[v.name].add(rd, case) for rd in reader.read_batch(imgs)]
                # how far each variant's first sample is from plain's and each mode's (same seed): did it act?
                row["diff"] = {n: {b: float(np.abs(im.astype(np.int16) - images[b].astype(np.int16)).mean())
                                   for b in ("plain", "per_step", "cached") if b in images}
                               for n, im in images.items()}
                per_case.append(row)
                if k < grid_cases:
                    grid.append((case, images))
        finally:
            srv.stop()
            log_text = srv.log_path.read_text(errors="replace")
    res = {"split": split, "cases": cases, "seeds": seeds, "steps": run.steps, "cfg": run.cfg_scale,
           "weight": run.weight, "window": list(run.window), "fill": run.fill, "sampler": "euler/normal",
           "world": f.dir.name,
           "time": clock.minutes(),
           "variants": {n: {**t.summary(), "seconds_per_prompt": seconds[n] / max(1, cases)}
                        for n, t in tally.items()},
           "reader_on_references": {k: sum(r["reference_read"][k] for r in per_case) / max(1, cases)
                                    for k in ("clicked", "all")},
           "per_case": per_case, "server_log_tail": log_text[-2000:],
           "adapters": {k: p.name for k, p in adapters.items()}}
    return {"results": res, "grid": grid}


def _settings(run: dict) -> str:
    """The key of a val pick: the sampling settings a pick holds for (a pick made at weight 3 says nothing
    about weight 1)."""
    return f"steps={run['steps']} cfg={run['cfg']:g} weight={run['weight']:g}"


def _read_picks(path: Path) -> tuple[dict[str, dict], str | None]:
    """(settings key -> pick, the key written last) from the pick file; the one-pick format of earlier
    versions reads as a single entry."""
    if not path.is_file():
        return {}, None
    data = json.loads(path.read_text())
    if "variant" in data:
        return {_settings(data): data}, _settings(data)
    return data.get("picks", {}), data.get("last")


def best_training_free(res: dict, cfg: WorldConfig) -> tuple[str, str]:
    """(variant, why): on ``val`` the best-scoring training-free variant (stored in the cache under the run's
    steps, cfg and weight, so a val run at other settings does not replace it); on any other split the val
    pick made at the same settings, else the latest pick (said so), or the pack's default (cached) if none."""
    tf = [n for n in res["variants"] if n not in NOT_TRAINING_FREE and not n.startswith("adapter")]
    pick_path = files(cfg).dir / PICK_FILE
    if not tf:  # e.g. --variants adapter: there is nothing to name, and plain is not a P3S mode
        return "none", "no training-free variant in this run (--variants)"
    picks, last = _read_picks(pick_path)
    if res["split"] == "val" and len(tf) >= 2:  # a val run of one variant (a sweep) picks nothing
        keep = [n for n in tf if keeps_class(res, n)]
        if not keep:  # every one lost the class: nothing to pick, nothing stored
            return (DEFAULT_VARIANT if DEFAULT_VARIANT in res["variants"] else tf[0]), \
                "no training-free variant keeps the class on this val run (nothing picked)"
        pick_path.parent.mkdir(parents=True, exist_ok=True)
        best = max(keep, key=lambda n: pick_score(res["variants"][n]))
        key = _settings(res)
        picks[key] = {"variant": best, "cases": res["cases"], "seeds": res["seeds"],
                      "steps": res["steps"], "cfg": res["cfg"], "weight": res["weight"]}
        pick_path.write_text(json.dumps({"picks": picks, "last": key}, indent=1))
        lost = f" ({len(tf) - len(keep)} lost the class)" if len(keep) < len(tf) else ""
        return best, f"best of {len(tf)} training-free variants on this val run{lost}"
    pick = picks.get(_settings(res)) or (picks.get(last) if last else None)
    if pick and pick["variant"] in res["variants"]:
        same = all(pick[k] == res[k] for k in ("steps", "cfg", "weight"))
        return pick["variant"], (f"picked on val ({pick['cases']} cases x {pick['seeds']} seeds"
                                 + (")" if same else f", at steps {pick['steps']} cfg {pick['cfg']} weight "
                                                     f"{pick['weight']}: not this run's settings)"))
    return (DEFAULT_VARIANT if DEFAULT_VARIANT in res["variants"] else tf[0]), \
        "the pack's default (no val pick in the cache)"


def _fmt(x: float | None) -> str:
    return "na" if x is None else f"{x:.2f}"


def last_line(res: dict, best: str) -> str:
    """``transfer clicked=.. leak=.. prompt=.. plain_clicked=.. noselect_clicked=.. noselect_leak=..
    adapter_clicked=.. adapter_leak=.. adapter_prompt=..`` (the issue's format; the first three: ``best``)."""
    vals = [("clicked", best, "clicked"), ("leak", best, "leak"), ("prompt", best, "prompt"),
            ("plain_clicked", "plain", "clicked"), ("noselect_clicked", "noselect", "clicked"),
            ("noselect_leak", "noselect", "leak"), ("adapter_clicked", "adapter", "clicked"),
            ("adapter_leak", "adapter", "leak"), ("adapter_prompt", "adapter", "prompt")]
    return "transfer " + " ".join(f"{k}={_fmt(share(res, v, m))}" for k, v, m in vals)


def table(res: dict) -> str:
    """Markdown table: every variant, clicked / leak / prompt with 95 % intervals, and the diagnostics."""
    def cell(s: dict) -> str:
        lo, hi = s["ci95"]
        return f"{s['share']:.2f} [{lo:.2f}, {hi:.2f}]"
    lines = ["| variant | n | clicked | leak | prompt | ref. scene | clicked (4 attr.) | leak (4 attr.) | class |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in res["variants"].items():
        lines.append(f"| {name} | {s['n']} | {cell(s['clicked'])} | {cell(s['leak'])} | {cell(s['prompt'])} | "
                     f"{s['ref_scene']['share']:.2f} | {s['clicked_full']['share']:.2f} | "
                     f"{s['leak_full']['share']:.2f} | {s['class']['share']:.2f} |")
    return "\n".join(lines)


def save_grid(grid: list, path: Path, best: str, scale: int = 2) -> list[str]:
    """One row per case: reference with its click (a white-ringed cross) | plain | no selection | best
    training-free | adapter (when run). Returns the column names."""
    from PIL import Image
    cols = [c for c in ("plain", "noselect", best, "adapter") if grid and c in grid[0][1]]
    s = grid[0][0].reference.image.shape[0] if grid else 64
    canvas = np.full((len(grid) * (s + 2), (1 + len(cols)) * (s + 2), 3), 255, np.uint8)
    for r, (case, images) in enumerate(grid):
        ref = case.reference.image.copy()
        x, y = int(case.click[0]), int(case.click[1])
        for d in range(-3, 4):  # a cross: white outline, black centre line
            for yy, xx in ((y + d, x), (y, x + d)):
                if 0 <= yy < s and 0 <= xx < s:
                    ref[yy, xx] = 0
        for yy, xx in ((y - 1, x - 1), (y - 1, x + 1), (y + 1, x - 1), (y + 1, x + 1)):
            if 0 <= yy < s and 0 <= xx < s:
                ref[yy, xx] = 255
        tiles = [ref] + [images[c] for c in cols]
        for c, t in enumerate(tiles):
            canvas[r * (s + 2):r * (s + 2) + s, c * (s + 2):c * (s + 2) + s] = t
    Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST).save(path)
    return ["reference + click"] + cols


def bench(cfg: WorldConfig, run: RunSettings, adapter: AdapterSettings | None = None, out: Path | None = None,
          json_out: Path | None = None, threads: int | None = None) -> dict:
    """The whole benchmark: adapters (if ``adapter.steps``), every variant, the table, the grid, the last line."""
    if not files(cfg).ready():
        raise SystemExit(f"worldbench: the world model {files(cfg).dir} is not trained: "
                         f"run {cfg.train_command()}")
    import torch
    adapter = adapter or AdapterSettings()
    check_variant_names(run.only, adapter.variant_names())  # before an adapter trains for an hour
    threads = threads or int(os.environ.get("P3S_WORLD_THREADS", 1))
    torch.set_num_threads(threads)
    clock = Clock()
    adapters = train_adapters(cfg, adapter, threads=threads) if adapter.steps > 0 else {}
    adapter_time = clock.minutes()
    got = run_bench(cfg, run, adapters, threads=threads)
    res = got["results"]
    best, why = best_training_free(res, cfg)
    res.update(threads=threads, load_average=os.getloadavg()[0], best_training_free=best, best_why=why,
               adapter_training_time=adapter_time, total_time=clock.minutes())
    if out is not None and got["grid"]:
        res["grid"] = {"path": str(out), "columns": save_grid(got["grid"], Path(out), best)}
    res["paired"] = {n: {m: paired_difference(res["per_case"], n, "plain", m) for m in ("clicked", "leak")}
                     for n in res["variants"] if n != "plain" and "plain" in res["variants"]}
    res["drawable"] = drawable_split(res)
    if json_out is not None:
        Path(json_out).write_text(json.dumps(res, indent=1, default=float))
    res["table"] = table(res)
    res["drawable_table"] = drawable_table(res["drawable"])
    res["paired_table"] = paired_table(res)
    res["last_line"] = last_line(res, best)
    return res

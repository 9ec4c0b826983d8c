"""worldbench command line (run from the repository root with the host's python):

    python -m worldbench train [--quick | --mid | --mid-long | --gpu]   # train (or reuse) the world model; quality gate
    python -m worldbench reader-eval [--quick | --gpu]  # the reader's accuracy on held-out renders
    python -m worldbench quality [--quick | --gpu]      # the world model's quality gate (KSampler + reader)
    python -m worldbench render --out DIR [--cases test] [--count N]
    python -m worldbench export --out DIR --count N [--split train]   # dataset for scripts/train_adapter.py
    python -m worldbench selection [--count N]          # the pack's point selection on world references
    python -m worldbench probe [--count N]              # quick look: does training-free P3S move identity?
    python -m worldbench noise-levels [ADAPTER ...]     # denoising error per noise level, with each injection
    python -m worldbench files [--quick | --gpu]        # where the trained files are
    python -m worldbench bench [--quick] --cases N --seeds K [--split val|test] [--adapter-steps S] --out GRID.png
                                                        # the transfer benchmark through a real ComfyUI server
    python -m worldbench merge RUN.json RUN.json=LABEL  # bench runs of the same cases side by side (--json)
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from . import config as config_mod
from . import world
from .settings import AdapterSettings, RunSettings


def _cfg(a) -> config_mod.WorldConfig:
    return config_mod.get("quick" if a.quick else "gpu" if a.gpu else "small" if a.small else "mid" if a.mid
                          else "mid_long" if a.mid_long else "default")


def _print(title: str, d: dict) -> None:
    print(f"== {title}")
    print(json.dumps(d, indent=1, default=lambda v: round(v, 4) if isinstance(v, float) else str(v)))


def cmd_train(a) -> None:
    from . import pipeline
    cfg = _cfg(a)
    t0 = time.time()
    f = pipeline.train_world(cfg, gpu=a.gpu)
    print(f"world model: {f.dir} ({(time.time() - t0) / 60:.1f} min this run)")
    if not a.no_quality:
        cmd_quality(a)
    _print("metrics", json.loads(f.metrics.read_text()))


def cmd_quality(a) -> None:
    from . import pipeline, quality
    cfg = _cfg(a)
    f = pipeline.files(cfg)
    t0 = time.time()
    q = quality.quality_gate(cfg, per_prompt=a.per_prompt, steps=a.steps, cfg_scale=a.cfg, gpu=a.gpu,
                             grid_path=f.dir / "quality_samples.png")
    q["minutes"] = (time.time() - t0) / 60
    pipeline.update_metrics(f, quality=q)
    _print(f"quality gate ({f.dir / 'quality_samples.png'})", q)
    print(f"quality class={q['class_found']:.3f} scene={q['scene']:.3f} "
          f"distinct_identities={q['distinct_identities']} colour_entropy={q['colour_entropy']:.2f}")


def cmd_reader_eval(a) -> None:
    from . import autoencoder, pipeline, reader_train
    cfg = _cfg(a)
    reader = pipeline.load_reader(cfg)
    data = reader_train.make_data("reader_eval", a.count, cfg.side, desc="held-out renders")
    out = {"clean": reader_train.evaluate(reader, data)}
    if pipeline.files(cfg).vae.is_file():
        from . import comfy_env
        comfy_env.setup()
        ae = pipeline.load_autoencoder(cfg)
        out["autoencoder_roundtrip"] = reader_train.evaluate(reader, data, data.roundtrip(
            lambda x: autoencoder.roundtrip(ae, x)))
    _print("reader", out)


def cmd_render(a) -> None:
    from PIL import Image
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    side = _cfg(a).side
    for k in range(a.count):
        if a.cases:
            c = world.test_case(a.cases, k, side)
            stem = f"{a.cases}_{k:04d}"
            Image.fromarray(c.reference.image).save(out / f"{stem}.png")
            Image.fromarray((c.reference.labels * (255 // 3)).astype(np.uint8)).save(out / f"{stem}_labels.png")
            (out / f"{stem}.json").write_text(json.dumps({
                "prompt": c.prompt, "prompt_scene": c.prompt_scene, "reference_scene": c.reference.scene.scene,
                "click": c.click, "target": c.target, "identity": list(c.identity.key),
                "lookalikes": [list(i.key) for i in c.lookalikes], "caption": c.reference.caption}, indent=1))
        else:
            r = world.training_image(k, side)
            Image.fromarray(r.image).save(out / f"world_{k:05d}.png")
            (out / f"world_{k:05d}.txt").write_text(r.caption + "\n")
    print(f"{a.count} images in {out}")


def cmd_export(a) -> None:
    from .export import export
    print(export(Path(a.out), a.count, a.split, _cfg(a).side))


def cmd_selection(a) -> None:
    from .selection import selection_check
    cv = None
    if a.clip_vision:
        from . import comfy_env
        comfy_env.setup()
        from . import family, pipeline
        cfg = _cfg(a)
        path = pipeline.files(cfg).clip_vision
        # the world CLIP vision is random and frozen: without the file, the same weights from its seed
        sd = pipeline._load(path) if path.is_file() else family.vision_state(cfg.seed + 200)
        cv = family.vision_model()
        cv.load_sd({k: v for k, v in sd.items() if k != family.VISION_MARKER})
    res = selection_check(a.count, a.split, _cfg(a).side, a.upscale, cv)
    _print("selection", res)
    print(f"selection mean_iou={res['mean_iou']:.3f} share_iou_ge_0.5={res['share_iou_ge_0.5']:.3f}")


def cmd_probe(a) -> None:
    from . import pipeline
    from .probe import transfer_probe
    cfg = _cfg(a)
    f = pipeline.files(cfg)
    res = transfer_probe(cfg, a.count, a.seeds, a.split, a.weight, a.mode, grid_path=f.dir / "probe_grid.png")
    pipeline.update_metrics(f, probe=res)
    _print(f"training-free probe (grid: {f.dir / 'probe_grid.png'}: reference | plain | P3S | no selection)", res)


def cmd_files(a) -> None:
    from . import pipeline
    f = pipeline.files(_cfg(a))
    print(json.dumps({"dir": str(f.dir), "checkpoint": str(f.checkpoint), "clip_vision": str(f.clip_vision),
                      "vae": str(f.vae), "reader": str(f.reader), "ready": f.ready(),
                      "registrar": str(Path(__file__).parent / "world_registrar")}, indent=1))


def cmd_bench(a) -> None:
    from . import bench
    cfg = _cfg(a)
    run, adapter = run_settings(a), adapter_settings(a)
    try:
        bench.check_variant_names(run.only, adapter.variant_names())
    except ValueError as e:
        raise SystemExit(f"worldbench bench: {e}") from None
    t0 = time.time()
    res = bench.bench(cfg, run, adapter, Path(a.out) if a.out else None, Path(a.json) if a.json else None,
                      a.threads)
    print(f"== transfer benchmark: {cfg.name} world ({res['world']}), split {a.split}, {a.cases} cases x "
          f"{a.seeds} samples, {a.steps} steps euler/normal, cfg {a.cfg}, weight {a.weight}"
          + (f", P3S from {a.start_percent:g} to {a.end_percent:g}" if (a.start_percent, a.end_percent) != (0, 1) else "")
          + (f", fill {a.fill}" if a.fill != "blur" else ""))
    print(res["table"])
    if res["paired_table"]:
        print("== against plain on the same cases and seeds (95 % bootstrap over cases)")
        print(res["paired_table"])
    rr = res["reader_on_references"]
    print(f"control: the reader on the references finds the clicked identity in {rr['clicked']:.2f} of them "
          f"(every identity right: {rr['all']:.2f})")
    if res.get("grid"):
        print(f"grid: {res['grid']['path']} (columns: {' | '.join(res['grid']['columns'])})")
    print(f"run time: {(time.time() - t0) / 60:.1f} min wall (adapters {res['adapter_training_time']['wall_minutes']:.1f}"
          f" min), {res['threads']} thread(s), load average {res['load_average']:.1f}")
    if res.get("drawable_table"):
        print("== clicked where the world model draws the identity when the prompt names it (named >= 0.5 on the case)")
        print(res["drawable_table"])
    print(f"best training-free variant: {res['best_training_free']} ({res['best_why']})")
    print(res["last_line"])


def run_settings(a) -> RunSettings:
    """The bench command's sampling settings."""
    return RunSettings(cases=a.cases, seeds=a.seeds, split=a.split, steps=a.steps, cfg_scale=a.cfg, weight=a.weight,
                       window=(a.start_percent, a.end_percent), fill=a.fill,
                       only=tuple(x for x in (a.variants or "").split(",") if x))


def adapter_settings(a) -> AdapterSettings:
    """The bench command's adapter training settings (``--adapter-*``; None: the trainer's default)."""
    return AdapterSettings(steps=a.adapter_steps, count=a.adapter_data, acl_weights=tuple(a.acl_weights),
                           lr=a.adapter_lr, rank=a.adapter_rank, read_rank=a.adapter_read_rank,
                           weighting=a.adapter_weighting, mode=a.adapter_mode,
                           read_gain=None if a.adapter_read_gain is None else bool(a.adapter_read_gain),
                           subject_attn=a.adapter_subject_attn, subject_loss=a.adapter_subject_loss,
                           lr_schedule=a.adapter_lr_schedule)


def cmd_pick(a) -> None:
    from .weight_pick import pick_table, pick_weight, weight_rows
    try:
        rows = weight_rows([json.loads(Path(f).read_text()) for f in a.runs], a.variant)
    except ValueError as exc:
        raise SystemExit(f"worldbench pick: {exc}") from None
    print(pick_table(rows, a.variant))
    w = pick_weight(rows)
    print(f"pick: weight {w:g}" if w is not None else
          "pick: none (every weight loses the subject's class: the adapter breaks the image)")


def cmd_merge(a) -> None:
    from .bench import METRICS, table
    from .breakdown import confusion_table, drawable_split, drawable_table, merge_runs
    from .paired import paired_table
    paths, labels = zip(*[(f.split("=", 1) + [None])[:2] for f in a.runs])
    res = merge_runs([json.loads(Path(f).read_text()) for f in paths], list(labels))
    metrics = tuple(m for m in a.metrics.split(",") if m)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise SystemExit(f"worldbench merge: --metrics {a.metrics!r}: {', '.join(bad) or 'none given'} not among "
                         f"{', '.join(METRICS)}")
    if a.against not in res["variants"]:
        raise SystemExit(f"worldbench merge: --against {a.against!r} is not a variant of the merged runs: "
                         f"{', '.join(res['variants'])}")
    print(f"== {len(a.runs)} runs merged: split {res['split']}, world {res['world']}")
    print(table(res))
    for title, text in ((f"against {a.against} on the same cases and seeds (95 % bootstrap over cases)",
                         paired_table(res, a.against, metrics)),
                        ("clicked where the world model draws the identity when the prompt names it "
                         "(named >= 0.5 on the case)", drawable_table(drawable_split(res)))):
        if text:
            print("== " + title)
            print(text)
    for name in a.confusion or []:
        text = confusion_table(res, name)
        print(f"== colour read per clicked colour: {name}" if text else f"== {name}: the runs hold no readings")
        if text:
            print(text)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=float))


def cmd_noise_levels(a) -> None:
    from . import noise_levels
    cfg = _cfg(a)
    t0 = time.time()
    res = noise_levels.noise_level_errors(cfg, [Path(p) for p in a.adapters], a.count)
    print(f"== clean-latent prediction error per noise level: {res['pairs']} val pairs, {cfg.name} world")
    print(noise_levels.table(res))
    print("== the same, inside the target subject's mask")
    print(noise_levels.table(res, "subject"))
    print(f"run time: {(time.time() - t0) / 60:.1f} min wall")


def _bench_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--cases", type=int, default=20)
    s.add_argument("--seeds", type=int, default=4, help="samples per case (one batch from one seed)")
    s.add_argument("--split", choices=("val", "test"), default="test",
                   help="val: tune (writes the best training-free pick); test: report")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--cfg", type=float, default=6.0)
    s.add_argument("--weight", type=float, default=1.0, help="P3S Apply weight of every P3S variant")
    s.add_argument("--start-percent", type=float, default=0.0, help="P3S Apply start_percent of every P3S variant")
    s.add_argument("--end-percent", type=float, default=1.0, help="P3S Apply end_percent of every P3S variant")
    s.add_argument("--fill", choices=("blur", "flat", "inpaint"), default="blur",
                   help="P3S Apply fill (the subject-only reference's outside) of every P3S variant")
    s.add_argument("--variants", default="", help="comma-separated subset (default: all)")
    s.add_argument("--adapter-steps", type=int, default=0, help="train adapters (ACL 0 and 100) for S steps")
    s.add_argument("--adapter-data", type=int, default=600, help="train-split pairs exported for the adapters")
    s.add_argument("--acl-weights", type=float, nargs="+", default=[0.0, 100.0],
                   help="ACL weights of the adapters; the last one is the 'adapter' of the last line")
    s.add_argument("--adapter-rank", type=int, default=8, help="the adapters' --rank")
    s.add_argument("--adapter-read-rank", type=int, default=None,
                   help="the adapters' --read-rank (default: the trainer's; 0: reference-side deltas only)")
    s.add_argument("--adapter-weighting", choices=("eps", "v", "x0"), default=None,
                   help="the adapters' --loss-weighting (default: the trainer's)")
    s.add_argument("--adapter-mode", choices=("cached", "per_step"), default=None,
                   help="the adapters' --reference-mode, also the mode they sample with (default: the trainer's)")
    s.add_argument("--adapter-lr", type=float, default=1e-3, help="the adapters' --lr")
    s.add_argument("--adapter-read-gain", type=int, choices=(0, 1), default=None,
                   help="the adapters' --read-gain (default: the trainer's)")
    s.add_argument("--adapter-subject-attn", type=int, default=None,
                   help="the adapters' --subject-attn width (default: the trainer's)")
    s.add_argument("--adapter-subject-loss", type=float, default=None,
                   help="the adapters' --subject-loss-weight (default: the trainer's)")
    s.add_argument("--adapter-lr-schedule", choices=("constant", "cosine"), default=None,
                   help="the adapters' --lr-schedule (default: the trainer's)")
    s.add_argument("--out", default=None, help="grid PNG to write")
    s.add_argument("--json", default=None, help="all results as JSON")
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads of the server and the trainer (default $P3S_WORLD_THREADS or 1)")


def _run_file_commands(sub) -> None:
    """The commands that read bench --json files (no world model needed): pick and merge."""
    s = sub.add_parser("pick", help="an adapter's weight from val runs at several weights (the README's rule)")
    s.add_argument("runs", nargs="+", help="bench --json files of the val split, one per weight")
    s.add_argument("--variant", default="adapter", help="the variant whose weight is picked (default adapter)")
    s.set_defaults(fn=cmd_pick)
    s = sub.add_parser("merge", help="bench runs of the same cases and seeds side by side")
    s.add_argument("runs", nargs="+", help="bench --json files; FILE=LABEL names that run's variants VARIANT_LABEL")
    s.add_argument("--json", default=None, help="the merged run as JSON")
    s.add_argument("--against", default="plain", metavar="VARIANT",
                   help="the variant every other one is compared with on the same samples (default plain)")
    s.add_argument("--metrics", default="clicked,leak",
                   help="comma-separated metrics of the paired table, e.g. clicked,leak,prompt,class")
    s.add_argument("--confusion", nargs="*", metavar="VARIANT",
                   help="also the colours read per clicked colour for these variants (runs of session 11 on)")
    s.set_defaults(fn=cmd_merge)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m worldbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name, fn, **kw):
        s = sub.add_parser(name, **kw)
        g = s.add_mutually_exclusive_group()
        g.add_argument("--quick", action="store_true", help="the CI smoke config")
        g.add_argument("--gpu", action="store_true", help="the larger config (uses CUDA when present)")
        g.add_argument("--small", action="store_true", help="a smaller model for experiments")
        g.add_argument("--mid", action="store_true", help="128 px images (16x16 latents), about 112 min on 2 cores")
        g.add_argument("--mid-long", action="store_true",
                       help="the mid world's U-Net trained 5000 steps more (about 60 min after --mid)")
        s.set_defaults(fn=fn)
        return s

    s = add("train", cmd_train)
    s.add_argument("--no-quality", action="store_true")
    for s in (s, add("quality", cmd_quality)):
        s.add_argument("--per-prompt", type=int, default=10)
        s.add_argument("--steps", type=int, default=20)
        s.add_argument("--cfg", type=float, default=6.0)
    add("reader-eval", cmd_reader_eval).add_argument("--count", type=int, default=500)
    s = add("render", cmd_render)
    s.add_argument("--out", required=True)
    s.add_argument("--count", type=int, default=16)
    s.add_argument("--cases", choices=world.SPLITS, help="benchmark cases of this split instead of training images")
    s = add("export", cmd_export)
    s.add_argument("--out", required=True)
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--split", choices=world.SPLITS, default="train")
    s = add("selection", cmd_selection)
    s.add_argument("--count", type=int, default=40)
    s.add_argument("--split", choices=world.SPLITS, default="val")
    s.add_argument("--upscale", type=int, default=1)
    s.add_argument("--clip-vision", action="store_true", help="select with the world CLIP vision's tokens")
    s = add("probe", cmd_probe)
    s.add_argument("--count", type=int, default=8)
    s.add_argument("--seeds", type=int, default=3)
    s.add_argument("--split", choices=world.SPLITS, default="val")
    s.add_argument("--weight", type=float, default=1.0)
    s.add_argument("--mode", choices=("per_step", "cached"), default="per_step")
    s = add("noise-levels", cmd_noise_levels)
    s.add_argument("--count", type=int, default=32, help="val pairs")
    s.add_argument("adapters", nargs="*", help="adapter files to compare with plain and training-free injection")
    add("files", cmd_files)
    _bench_args(add("bench", cmd_bench))
    _run_file_commands(sub)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())

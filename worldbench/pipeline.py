"""Training the whole world model, stage by stage, each stage cached in the config's folder.

    autoencoder -> reader (clean renders) -> reader fine-tune (+ autoencoder round trips)
    -> latents of the training images -> U-Net -> world.safetensors + world_clip_vision.safetensors

A world whose U-Net restarts (``UNetConfig.restart_steps``, e.g. ``mid_long``) first trains or reuses the world
without the restart, copies its autoencoder, readers and CLIP vision, and trains only the U-Net on.

A stage whose output file exists is skipped, so an interrupted run continues (the autoencoder and the
U-Net also keep resume files) and a finished one is reused as is. Figures go to metrics.json, the log to train.log.
"""
from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import autoencoder, comfy_env, reader_train, world
from .config import WorldConfig
from .progress import progress

log = logging.getLogger("P3S")


@dataclass(frozen=True)
class WorldFiles:
    """Where a config's trained files live (``python -m worldbench train`` makes them)."""
    dir: Path

    checkpoint = property(lambda self: self.dir / "world.safetensors")  # U-Net + text encoder + TAESD VAE
    clip_vision = property(lambda self: self.dir / "world_clip_vision.safetensors")
    vae = property(lambda self: self.dir / "world_vae.safetensors")  # the TAESD alone (VAELoader)
    reader = property(lambda self: self.dir / "reader.safetensors")
    reader_base = property(lambda self: self.dir / "reader_clean.safetensors")
    latents = property(lambda self: self.dir / "latents.pt")
    unet_resume = property(lambda self: self.dir / "unet_resume.pt")
    ae_resume = property(lambda self: self.dir / "ae_resume.pt")
    metrics = property(lambda self: self.dir / "metrics.json")
    log = property(lambda self: self.dir / "train.log")

    def ready(self) -> bool:
        return all(p.is_file() for p in (self.checkpoint, self.clip_vision, self.reader))


def files(cfg: WorldConfig) -> WorldFiles:
    return WorldFiles(cfg.cache_dir())


class Clock:
    """Wall and CPU minutes since creation (CPU time is what a quiet machine would need, summed over
    threads: a figure that does not depend on how busy the shared machine is)."""

    def __init__(self):
        self.wall, self.cpu = time.time(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def minutes(self) -> dict:
        return {"wall_minutes": (time.time() - self.wall) / 60, "cpu_minutes": (self._cpu() - self.cpu) / 60}


def _metrics(f: WorldFiles) -> dict:
    return json.loads(f.metrics.read_text()) if f.metrics.is_file() else {}


def update_metrics(f: WorldFiles, **kv) -> dict:
    m = _metrics(f)
    m.update(kv)
    f.metrics.write_text(json.dumps(m, indent=1, default=float))
    return m


def _save(sd: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def _load(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


def load_reader(cfg: WorldConfig, path: Path | None = None):
    from .reader import Reader
    return Reader.from_state_dict(_load(path or files(cfg).reader), cfg.side, cfg.reader.width)


def load_autoencoder(cfg: WorldConfig):
    ae = autoencoder.build()
    ae.load_state_dict(split_checkpoint(_load(files(cfg).checkpoint))[2] if files(cfg).checkpoint.is_file()
                       else _load(files(cfg).vae))
    return ae.eval()


def _stage_reader(cfg: WorldConfig, f: WorldFiles, ae=None) -> None:
    rc = cfg.reader
    clock = Clock()
    data = reader_train.make_data("reader", rc.images, cfg.side, desc="reader: render")
    evald = reader_train.make_data("reader_eval", 400, cfg.side, desc="reader: render held-out")
    if ae is None:
        r = reader_train.train_reader(data, rc.seg_steps, rc.id_steps, cfg.side, width=rc.width, batch=rc.batch,
                                      seed=cfg.seed)
        _save(r.state_dict(), f.reader_base)
        update_metrics(f, reader_clean=reader_train.evaluate(r, evald), reader_time=clock.minutes())
        return
    # round trips of part of the data (an autoencoder pass costs more than a reader step)
    part = min(len(data.images), max(rc.batch, rc.images // 4))
    rt = torch.cat([autoencoder.roundtrip(ae, data.images[i:i + 64]) for i in
                    progress(range(0, part, 64), desc="reader: round trips")])
    r = reader_train.train_reader(data, rc.finetune_steps, rc.finetune_steps, cfg.side, width=rc.width,
                                  batch=rc.batch, seed=cfg.seed + 1, roundtrip=rt, init=load_reader(cfg, f.reader_base))
    _save(r.state_dict(), f.reader)
    ev_rt = evald.roundtrip(lambda x: autoencoder.roundtrip(ae, x))
    update_metrics(f, reader_clean=reader_train.evaluate(r, evald),
                   reader_roundtrip=reader_train.evaluate(r, evald, ev_rt), reader_finetune_time=clock.minutes())


def _render_images(stream_count: int, cfg: WorldConfig, desc: str) -> tuple[torch.Tensor, list[str]]:
    imgs, caps = [], []
    for k in progress(range(stream_count), desc=desc):
        r = world.training_image(k, cfg.side, cfg.twin_share, cfg.attribute_share)
        imgs.append(torch.from_numpy(r.image))
        caps.append(r.caption)
    return torch.stack(imgs).permute(0, 3, 1, 2).float() / 255, caps


def _stage_autoencoder(cfg: WorldConfig, f: WorldFiles):
    a = cfg.ae
    clock = Clock()
    images, _ = _render_images(a.images, cfg, "autoencoder: render")
    ae = autoencoder.train(images, steps=a.steps, full_steps=a.full_steps, crop=a.crop, batch=a.batch, lr=a.lr,
                           latent_noise=a.latent_noise, seed=cfg.seed, resume=f.ae_resume)
    _save(autoencoder.state_dict(ae), f.vae)
    f.ae_resume.unlink(missing_ok=True)
    held = reader_train.make_data("reader_eval", 200, cfg.side, desc="autoencoder: held-out")
    hist = ae.history
    update_metrics(f, autoencoder={"psnr_heldout": autoencoder.psnr(ae, held.images),
                                   "rec_loss_first": sum(hist[:20]) / 20, "rec_loss_last": sum(hist[-50:]) / 50,
                                   "steps": len(hist), "vae_scale": ae.vae_scale.item(),
                                   "vae_shift": ae.vae_shift.item(), **clock.minutes()})
    return ae


def _stage_latents(cfg: WorldConfig, f: WorldFiles, ae) -> dict:
    if f.latents.is_file():
        return torch.load(f.latents, weights_only=False)
    u = cfg.unet
    clock = Clock()
    lat, caps = [], []
    chunk = 256
    for start in progress(range(0, u.images, chunk), desc="latents: render + encode"):
        imgs, c = [], []
        for k in range(start, min(u.images, start + chunk)):
            r = world.training_image(k, cfg.side, cfg.twin_share, cfg.attribute_share)
            imgs.append(torch.from_numpy(r.image))
            c.append(r.caption)
        x = torch.stack(imgs).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            lat.append(torch.cat([autoencoder.encode(ae, x[i:i + 64]) for i in range(0, len(x), 64)]))
        caps += c
    out = {"latents": torch.cat(lat), "captions": caps, "time": clock.minutes()}
    torch.save(out, f.latents)
    return out


def checkpoint_state(unet_sd: dict, text_sd: dict, vae_sd: dict) -> dict:
    """The checkpoint layout CheckpointLoaderSimple reads for an SD1.5-family model."""
    sd = {"model.diffusion_model." + k: v.float() for k, v in unet_sd.items()}
    sd.update(text_sd)
    sd.update({"first_stage_model." + k: v.float() for k, v in vae_sd.items()})
    return sd


def split_checkpoint(sd: dict) -> tuple[dict, dict, dict]:
    """(U-Net, text encoder, VAE) state dicts of a checkpoint ``checkpoint_state`` wrote."""
    unet_p, vae_p = "model.diffusion_model.", "first_stage_model."
    return ({k[len(unet_p):]: v for k, v in sd.items() if k.startswith(unet_p)},
            {k: v for k, v in sd.items() if not k.startswith((unet_p, vae_p))},
            {k[len(vae_p):]: v for k, v in sd.items() if k.startswith(vae_p)})


def encode_captions(cfg: WorldConfig, f: WorldFiles, captions: list[str], text_sd: dict, unet_sd: dict,
                    vae_sd: dict) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Contexts of the unique captions (and of the empty prompt) computed by ComfyUI's own CLIP object,
    loaded from a checkpoint file exactly as CheckpointLoaderSimple loads it."""
    import comfy.sd
    probe = f.dir / "text_probe.safetensors"
    _save(checkpoint_state(unet_sd, text_sd, vae_sd), probe)
    _, clip, _ = comfy.sd.load_checkpoint_guess_config(str(probe))[:3]
    probe.unlink()
    uniq = sorted(set(captions))
    ctx = []
    with torch.no_grad():
        for c in progress(uniq, desc="captions"):
            ctx.append(clip.encode_from_tokens(clip.tokenize(c)).float()[0])
        empty = clip.encode_from_tokens(clip.tokenize("")).float()[0]
    return torch.stack(ctx), empty, uniq


def train_world(cfg: WorldConfig, gpu: bool = False) -> WorldFiles:
    """Every stage that is not cached yet; returns the files."""
    import os
    torch.set_num_threads(int(os.environ.get("P3S_WORLD_THREADS", cfg.threads)))
    if cfg.unet.restart_steps:
        base = train_world(cfg.base(), gpu)  # first the world it restarts from (cached when trained)
    f = files(cfg)
    f.dir.mkdir(parents=True, exist_ok=True)
    (f.dir / "config.json").write_text(cfg.to_json())
    handler = logging.FileHandler(f.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    t_all = Clock()
    try:
        comfy_env.setup(gpu)
        if cfg.unet.restart_steps:
            _stage_restart(cfg, f, base)
        else:
            _stages(cfg, f)
        update_metrics(f, train_last_run=t_all.minutes())
    finally:
        log.removeHandler(handler)
    return f


def _stages(cfg: WorldConfig, f: WorldFiles) -> None:
    from . import family, unet
    if not f.vae.is_file():
        log.info("worldbench: training the autoencoder")
        ae = _stage_autoencoder(cfg, f)
    else:
        ae = autoencoder.build()
        ae.load_state_dict(_load(f.vae))
        ae.eval()
    if not f.reader_base.is_file():
        log.info("worldbench: training the reader on clean renders")
        _stage_reader(cfg, f)
    if not f.reader.is_file():
        if cfg.reader.finetune_steps > 0:
            log.info("worldbench: fine-tuning the reader on autoencoder round trips")
            _stage_reader(cfg, f, ae)
        else:
            f.reader.write_bytes(f.reader_base.read_bytes())
    if not f.checkpoint.is_file():
        data = _stage_latents(cfg, f, ae)
        text_sd = family.text_encoder_state(cfg.seed + 100)
        model = unet.build(cfg.unet, cfg.seed)
        vae_sd = autoencoder.state_dict(ae)
        _train_unet(cfg, f, model, data, text_sd, vae_sd, cfg.unet, cfg.seed, "unet")
    if not f.clip_vision.is_file():
        _save(family.vision_state(cfg.seed + 200), f.clip_vision)


def _train_unet(cfg: WorldConfig, f: WorldFiles, model, data: dict, text_sd: dict, vae_sd: dict, ucfg, seed: int,
                key: str) -> None:
    """Trains ``model``'s U-Net on the latents with ``ucfg`` and writes the checkpoint; figures under ``key``."""
    from . import unet
    ctx, empty, uniq = encode_captions(cfg, f, data["captions"], text_sd, model.diffusion_model.state_dict(), vae_sd)
    index = {c: i for i, c in enumerate(uniq)}
    ids = torch.tensor([index[c] for c in data["captions"]])
    clock = Clock()
    log.info("worldbench: training the U-Net (%d images, %d captions, %d steps)", len(ids), len(uniq), ucfg.steps)
    ema_sd, hist = unet.train(model, data["latents"], ids, ctx, empty, ucfg, seed, resume=f.unet_resume, desc=key)
    _save(checkpoint_state(ema_sd, text_sd, vae_sd), f.checkpoint,
          metadata={"p3s_world": cfg.key(), "config": cfg.to_json()})
    f.unet_resume.unlink(missing_ok=True)
    n = len(hist)
    update_metrics(f, **{key: {"steps": n, "loss_first_200": sum(hist[:200]) / max(1, min(200, n)),
                               "loss_last_500": sum(hist[-500:]) / max(1, min(500, n)),
                               "params_M": sum(v.numel() for v in ema_sd.values()) / 1e6,
                               "captions": len(uniq), **clock.minutes(), "latents_time": data.get("time")}})


def _stage_restart(cfg: WorldConfig, f: WorldFiles, base: WorldFiles) -> None:
    """The U-Net of ``base`` (the same world without the restart) trained on for ``restart_steps`` more steps
    from its EMA weights, one more cosine cycle from the recipe's lr; everything else is the base's (copied,
    so the world stands on its own; its figures start as those of the stages it shares with the base)."""
    from . import unet
    for name in ("vae", "reader_base", "reader", "clip_vision"):
        src, dst = getattr(base, name), getattr(f, name)
        if not dst.is_file():
            dst.write_bytes(src.read_bytes())
    if f.checkpoint.is_file():
        return
    if not f.metrics.is_file():  # the stages it shares with the base (and the base's first U-Net cycle)
        shared = {k: v for k, v in _metrics(base).items() if k.startswith(("autoencoder", "reader", "unet"))}
        f.metrics.write_text(json.dumps({**shared, "base": base.dir.name}, indent=1))
    unet_sd, text_sd, vae_sd = split_checkpoint(_load(base.checkpoint))
    model = unet.build(cfg.unet, cfg.seed)
    model.diffusion_model.load_state_dict(unet_sd)
    data = torch.load(base.latents, weights_only=False)
    log.info("worldbench: restarting the U-Net of %s for %d steps", base.dir.name, cfg.unet.restart_steps)
    # seed + 7: the restart draws other batches and noise than the first cycle
    _train_unet(cfg, f, model, data, text_sd, vae_sd, replace(cfg.unet, steps=cfg.unet.restart_steps),
                cfg.seed + 7, "unet_restart")

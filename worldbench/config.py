"""World-model configurations and their cache folder (``~/.cache/p3s/world/<hash>/``).

The hash covers the whole configuration and ``WORLD_VERSION``: bump it whenever a change to the world's
drawing or to a training recipe should invalidate trained models. Everything trained is reused from the
cache when present; nothing under it is ever committed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

WORLD_VERSION = "1"


@dataclass(frozen=True)
class ReaderConfig:
    images: int = 5000
    seg_steps: int = 1500  # segmenter (batches of ``batch`` images)
    id_steps: int = 1000  # identity net (batches of 2 x ``batch`` instance crops)
    width: int = 16
    batch: int = 32
    finetune_steps: int = 400  # both again, with autoencoder round trips in half of the batches


@dataclass(frozen=True)
class AEConfig:
    images: int = 3000
    crop: int = 32
    batch: int = 16
    steps: int = 1800
    full_steps: int = 300  # then on whole images
    lr: float = 1e-3
    latent_noise: float = 0.1  # the decoder learns to read slightly wrong latents (generated ones are)


@dataclass(frozen=True)
class UNetConfig:
    images: int = 16000
    model_channels: int = 64
    channel_mult: tuple = (1, 2, 2)
    num_res_blocks: int = 1
    steps: int = 6000
    batch: int = 32
    lr: float = 3e-4
    ema: float = 0.999
    caption_dropout: float = 0.1  # empty prompt, for classifier-free guidance
    # Then a second cosine cycle of this many steps from the trained U-Net's EMA weights (a warm restart at
    # ``lr``); 0: none. A world with a restart reuses everything else from the world without it
    # (``WorldConfig.base``), so it costs only the restart.
    restart_steps: int = 0


@dataclass(frozen=True)
class WorldConfig:
    name: str = "default"
    side: int = 64
    seed: int = 0
    twin_share: float = 0.15
    attribute_share: float = 0.25
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    ae: AEConfig = field(default_factory=AEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    threads: int = 2  # torch threads ($P3S_WORLD_THREADS overrides: 1 is faster on a busy machine)

    def key(self) -> str:
        d = asdict(self)
        d.pop("name")
        d.pop("threads")
        if not self.unet.restart_steps:  # worlds trained before the option keep their key (and their cache)
            d["unet"].pop("restart_steps")
        blob = json.dumps({"version": WORLD_VERSION, **d}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def base(self) -> WorldConfig:
        """The world without the U-Net's restart, named as the config it is (its cache is shared)."""
        base = replace(self, unet=replace(self.unet, restart_steps=0))
        named = [n for n, c in CONFIGS.items() if c.key() == base.key()]
        return replace(base, name=named[0] if named else f"{self.name}_base")

    def cache_dir(self) -> Path:
        root = Path(os.environ.get("P3S_WORLD_CACHE", Path.home() / ".cache" / "p3s" / "world"))
        return root / f"{self.name}-{self.key()}"

    def train_command(self) -> str:
        """The command that trains this world (said when a command needs it and it is not trained)."""
        return "python -m worldbench train" + ("" if self.name == "default" else " --" + self.name.replace("_", "-"))

    def to_json(self) -> str:
        return json.dumps({"version": WORLD_VERSION, "key": self.key(), **asdict(self)}, indent=1)


# The CPU config: fits 60 min on 2 cores (see the README's world section for measured figures).
DEFAULT = WorldConfig()
# CI smoke: a couple of minutes, checks the whole pipeline, not quality.
QUICK = WorldConfig(
    name="quick",
    reader=ReaderConfig(images=700, seg_steps=150, id_steps=500, finetune_steps=0),
    ae=AEConfig(images=300, steps=60, full_steps=10),
    unet=UNetConfig(images=400, model_channels=32, steps=60, batch=16),
)
# A smaller model for experiments (about a third of the default's cost): same world and architecture.
SMALL = WorldConfig(
    name="small",
    reader=ReaderConfig(images=3000, seg_steps=500, id_steps=700, finetune_steps=150),
    ae=AEConfig(images=2000, steps=600, full_steps=100),
    unet=UNetConfig(images=6000, steps=1500),
)
# 128 px images (16x16 latents: four times the default's subject tokens per attention layer) with the
# default's model sizes and more captions that name the identity, for the CPU: about 112 min on 2 cores
# (autoencoder 15, reader 13, latents 19, U-Net 8000 steps at 2.1/s 65), more than one 60 min sitting;
# every stage resumes from its cache, but only on the same machine.
MID = WorldConfig(
    name="mid", side=128, attribute_share=0.5,
    reader=ReaderConfig(images=4000, seg_steps=1200, id_steps=1000, finetune_steps=300),
    ae=AEConfig(images=3000, steps=2000, full_steps=150),
    unet=UNetConfig(steps=8000, batch=16),  # 4x the tokens per image: half the default's batch, 2x its work
)
# The mid world's U-Net trained on for a second cosine cycle of 5000 steps (about 60 min on one core after
# the mid world): named colour on the quality gate 0.48 -> 0.88, on the benchmark's val cases 0.69 -> 0.82
# and test cases 0.51 -> 0.69 (session 15). The first world that passes the colour-steerability gate on val.
MID_LONG = replace(MID, name="mid_long", unet=replace(MID.unet, restart_steps=5000))
# With a GPU: 128 px images (16x16 latents), a wider U-Net, more data and steps.
GPU = WorldConfig(
    name="gpu", side=128, threads=8,
    reader=ReaderConfig(images=20000, seg_steps=6000, id_steps=4000, width=24, batch=64, finetune_steps=2000),
    ae=AEConfig(images=20000, crop=64, batch=32, steps=8000, full_steps=2000),
    unet=UNetConfig(images=60000, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, steps=60000,
                    batch=128, lr=2e-4, ema=0.9995),
)
CONFIGS = {"default": DEFAULT, "quick": QUICK, "small": SMALL, "mid": MID, "mid_long": MID_LONG, "gpu": GPU}


def get(name: str = "default", **overrides) -> WorldConfig:
    return replace(CONFIGS[name], **overrides) if overrides else CONFIGS[name]

"""``TrainConfig``: every setting of an adapter training run, with the defaults the command line uses.

scripts/train_adapter.py makes one ``--flag`` per field from this dataclass (name, default, help and
choices come from here), so the command line and the library cannot disagree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

PRECISIONS = ("fp32", "fp16", "bf16")
LOSS_WEIGHTINGS = ("eps", "v", "x0")  # diffusion loss per sample: eps MSE x 1, x (1 + sigma^2), x sigma^2
REFERENCE_MODES = ("cached", "per_step")  # P3S Apply's reference_mode values: train the way you will sample
TRAIN_FILLS = ("blur", "flat")  # fills of the on-the-fly reference (inpaint needs sampling: not in training)
LR_SCHEDULES = ("constant", "cosine")


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    steps: int = _opt(4000, "optimizer steps")
    batch_size: int = _opt(1, "images per step and per process")
    lr: float = _opt(1e-4, "AdamW learning rate")
    lr_schedule: str = _opt("constant", "learning rate over the run: constant, or cosine (a linear warm-up over "
                                        "--warmup-steps, then a cosine decay to 0 at --steps)", choices=LR_SCHEDULES)
    warmup_steps: int = _opt(0, "steps of linear learning-rate warm-up (cosine schedule only)")
    rank: int = _opt(16, "rank of the low-rank reference deltas (file size and capacity grow with it)")
    read_rank: int = _opt(8, "rank of the read deltas: the denoising pass's queries on the subject tokens "
                             "(0: none, the reference-side deltas only)")
    read_gain: int = _opt(0, "1: learn a gain per layer on the subject tokens' attention share (multiplies P3S "
                             "Apply's weight, which stops at 3); 0: none", choices=(0, 1))
    subject_attn: int = _opt(0, "width of a subject cross-attention per layer: the denoising pass reads the subject "
                                "from the resampler's tokens directly, its output added to each block's "
                                "cross-attention (0: none)")
    loss_weighting: str = _opt("v", "diffusion loss weighting over noise levels: eps (plain eps MSE), v (x (1 + "
                                    "sigma^2): the v-prediction loss, which weights the high-noise steps where the "
                                    "subject's identity is decided), x0 (x sigma^2)", choices=LOSS_WEIGHTINGS)
    subject_loss_weight: float = _opt(0.0, "extra diffusion-loss weight on the subject's pixels in the target: "
                                           "each pixel counts 1 + W x its subject mask (masks/<stem>.png), "
                                           "scaled so every image's loss keeps its size (0: every pixel alike)")
    reference_mode: str = _opt("cached", "the reference pass while training, as P3S Apply's reference_mode: cached "
                                         "(the clean reference, at the lowest noise level) or per_step (noised "
                                         "to each step's level)", choices=REFERENCE_MODES)
    alpha: float | None = _opt(None, "delta scale numerator (scale = alpha / rank; default: alpha = rank)",
                               type=float)
    acl_weight: float = _opt(100.0, "lambda of the Attention Consistency Loss (0: off, one U-Net pass less)")
    seed: int = _opt(0, "seeds the adapter init, data order, clicks, timesteps and noise")
    sample_every: int = _opt(0, "write sample images every N steps (0: never)")
    checkpoint_every: int = _opt(500, "write a resumable checkpoint every N steps (0: never)")
    prompt_template: str = _opt("{caption}", "how captions become prompts, e.g. 'a photo of {caption}'")
    points_range: tuple[int, int] = _opt((1, 3), "clicks sampled per mask and step: LOW HIGH")
    min_depth: float = _opt(0.35, "clicks lie at least this fraction of the mask's deepest point from its edge")
    fill: str = _opt("blur", "how the training reference removes everything outside the selection",
                     choices=TRAIN_FILLS)
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    grad_clip: float = _opt(1.0, "gradient norm clipping (0: off)")
    precision: str = _opt("fp32", "U-Net weights and autocast on GPU; the CPU always runs fp32",
                          choices=PRECISIONS)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "rank"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"P3S: --{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if int(self.read_rank) < 0:
            raise ValueError(f"P3S: --read-rank must be >= 0 (0: no read deltas), got {self.read_rank}")
        if int(self.subject_attn) < 0:
            raise ValueError(f"P3S: --subject-attn must be >= 0 (0: none), got {self.subject_attn}")
        if int(self.read_gain) not in (0, 1):
            raise ValueError(f"P3S: --read-gain must be 0 or 1, got {self.read_gain}")
        if self.reference_mode not in REFERENCE_MODES:
            raise ValueError(f"P3S: --reference-mode must be one of {', '.join(REFERENCE_MODES)}, "
                             f"got {self.reference_mode!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"P3S: --loss-weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, "
                             f"got {self.loss_weighting!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"P3S: --lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"P3S: --lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 <= int(self.warmup_steps) < int(self.steps):
            raise ValueError(f"P3S: --warmup-steps must be >= 0 and below --steps ({self.steps}), "
                             f"got {self.warmup_steps}")
        if int(self.warmup_steps) > 0 and self.lr_schedule != "cosine":
            raise ValueError(f"P3S: --warmup-steps {self.warmup_steps} needs --lr-schedule cosine "
                             "(the constant schedule has no warm-up)")
        if not (self.subject_loss_weight >= 0 and math.isfinite(self.subject_loss_weight)):
            raise ValueError(f"P3S: --subject-loss-weight must be >= 0 (0: off), got {self.subject_loss_weight}")
        if not (self.acl_weight >= 0 and math.isfinite(self.acl_weight)):
            raise ValueError(f"P3S: --acl-weight must be >= 0, got {self.acl_weight}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"P3S: --precision must be fp32, fp16 or bf16, got {self.precision!r}")
        if "{caption}" not in self.prompt_template:
            raise ValueError(f"P3S: --prompt-template {self.prompt_template!r} must contain {{caption}}")
        lo, hi = self.points_range
        if not 1 <= lo <= hi:
            raise ValueError(f"P3S: points_range {self.points_range} must satisfy 1 <= low <= high")
        if self.fill not in TRAIN_FILLS:
            raise ValueError(f"P3S: --fill must be one of {', '.join(TRAIN_FILLS)}, got {self.fill!r}")
        if not 0.0 <= self.min_depth <= 1.0:
            raise ValueError(f"P3S: --min-depth must be in 0..1, got {self.min_depth}")


def lr_factor(config: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a fraction of --lr. A function of the step
    alone, so a resumed run follows the uninterrupted one."""
    if config.lr_schedule == "constant":
        return 1.0
    warm = int(config.warmup_steps)
    if step < warm:
        return (step + 1) / (warm + 1)
    span = max(1, int(config.steps) - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))


def config_fields() -> list:
    """The dataclass fields of ``TrainConfig`` (for the command line)."""
    return list(fields(TrainConfig))

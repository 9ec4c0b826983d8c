"""What one benchmark run varies: the sampling settings of every variant (``RunSettings``) and the training
settings of its adapters (``AdapterSettings``).

Both are frozen values built once (from the command line in ``__main__``, or directly in tests and scripts)
and handed down whole, so a new setting is added in one place: its field, its cache-name tag and its
trainer flag live side by side here instead of in a dozen keyword lists.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunSettings:
    """The sampling settings of one run: every P3S variant samples at the same weight, window and fill."""
    cases: int = 20
    seeds: int = 4  # samples per case (one batch from one seed)
    split: str = "test"
    steps: int = 20
    cfg_scale: float = 6.0
    weight: float = 1.0  # P3S Apply weight
    window: tuple[float, float] = (0.0, 1.0)  # P3S Apply start_percent, end_percent
    fill: str = "blur"  # P3S Apply fill
    only: tuple[str, ...] = ()  # the variants to run (empty: all)


@dataclass(frozen=True)
class AdapterSettings:
    """How the benchmark's adapters are trained by ``scripts/train_adapter.py``: one adapter per ACL weight,
    ``steps`` steps on ``count`` exported train-split pairs. A field left None is the trainer's own default
    (``resolved()`` reads it from ``TrainConfig``), so the benchmark follows the trainer when it changes."""
    steps: int = 0  # 0: no adapters in this run
    count: int = 600
    acl_weights: tuple[float, ...] = (0.0, 100.0)  # the last one is the "adapter" of the last line
    batch: int = 4
    lr: float = 1e-3
    rank: int = 8
    read_rank: int | None = None
    weighting: str | None = None
    mode: str | None = None
    read_gain: bool | None = None
    subject_attn: int | None = None
    subject_loss: float | None = None
    lr_schedule: str | None = None

    def variant_names(self) -> list[str]:
        """The benchmark variants these adapters become: ``adapter`` (the last ACL weight), ``adapter_aclW``."""
        if self.steps <= 0:
            return []
        return ["adapter" if w == self.acl_weights[-1] else f"adapter_acl{w:g}" for w in self.acl_weights]

    def resolved(self) -> AdapterSettings:
        """Every None replaced by the trainer's default."""
        sys.path.append(str(REPO))
        from p3s_core.training.config import TrainConfig
        pick = lambda v, d: d if v is None else v  # noqa: E731
        return replace(self, read_rank=int(pick(self.read_rank, TrainConfig.read_rank)),
                       weighting=self.weighting or TrainConfig.loss_weighting,
                       mode=self.mode or TrainConfig.reference_mode,
                       read_gain=bool(pick(self.read_gain, TrainConfig.read_gain)),
                       subject_attn=int(pick(self.subject_attn, TrainConfig.subject_attn)),
                       subject_loss=float(pick(self.subject_loss, TrainConfig.subject_loss_weight)),
                       lr_schedule=self.lr_schedule or TrainConfig.lr_schedule)

    def file_name(self, acl: float) -> str:
        """The cache name of the adapter trained at ACL weight ``acl``: every setting the benchmark varies
        (call on ``resolved()`` settings). lr is named only off 1e-3 (the benchmark's first value), the gain
        only when on, and so on, so files named before a setting existed keep their names."""
        tag = (f"q{self.read_rank}_{self.weighting}" + ("" if self.mode == "per_step" else f"_{self.mode}")
               + ("" if self.lr == 1e-3 else f"_lr{self.lr:g}") + ("_g" if self.read_gain else "")
               + (f"_x{self.subject_attn}" if self.subject_attn else "")
               + (f"_m{self.subject_loss:g}" if self.subject_loss else "")
               + ("" if self.lr_schedule == "constant" else f"_{self.lr_schedule[:3]}"))
        return f"world_adapter_acl{acl:g}_s{self.steps}_b{self.batch}_r{self.rank}_{tag}_n{self.count}.safetensors"

    def trainer_args(self, acl: float) -> list[str]:
        """The trainer's flags for these settings at ACL weight ``acl`` (call on ``resolved()`` settings)."""
        return ["--steps", str(self.steps), "--batch-size", str(self.batch), "--lr", str(self.lr),
                "--rank", str(self.rank), "--acl-weight", f"{acl:g}", "--read-rank", str(self.read_rank),
                "--loss-weighting", self.weighting, "--reference-mode", self.mode,
                "--read-gain", str(int(self.read_gain)), "--subject-attn", str(self.subject_attn),
                "--subject-loss-weight", f"{self.subject_loss:g}", "--lr-schedule", self.lr_schedule]

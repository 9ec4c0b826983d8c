"""The training dataset and configuration (pure core, no comfy): paired references, refusals, CLI defaults."""
from __future__ import annotations

import importlib.util
import json
import math
import types
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from p3s_core.training import SubjectDataset, TrainConfig, prepare_reference

REPO = Path(__file__).resolve().parents[2]
SIDE = 32


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _scene(side: int, x0: int, colour) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((side, side, 3), 90, np.uint8)
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4: 3 * side // 4, x0: x0 + side // 3] = 255
    image[mask > 0] = colour
    return image, mask


def _dataset(root: Path, paired: bool = True, ref_mask: str = "good") -> Path:
    target, target_mask = _scene(SIDE, 2, (200, 120, 60))
    _png(root / "images" / "a.png", target)
    (root / "captions").mkdir(parents=True, exist_ok=True)
    (root / "captions" / "a.txt").write_text("a dog")
    if not paired:
        _png(root / "masks" / "a.png", target_mask)
        return root
    ref, mask = _scene(2 * SIDE, SIDE, (60, 120, 200))  # another photo, another size and place
    _png(root / "references" / "a.png", ref)
    if ref_mask == "good":
        _png(root / "reference_masks" / "a.png", mask)
    elif ref_mask == "wrong_size":
        _png(root / "reference_masks" / "a.png", mask[:SIDE, :SIDE])
    elif ref_mask == "empty":
        _png(root / "reference_masks" / "a.png", np.zeros_like(mask))
    elif ref_mask == "points":
        (root / "reference_points").mkdir(parents=True)
        (root / "reference_points" / "a.json").write_text(json.dumps(
            {"width": 2 * SIDE, "height": 2 * SIDE, "positive": [{"x": SIDE + 5, "y": SIDE}], "negative": []}))
    return root


@pytest.mark.parametrize("kind", ["good", "points"])
def test_a_paired_reference_is_the_selection_source(tmp_path, kind):
    sample = SubjectDataset(_dataset(tmp_path, ref_mask=kind), SIDE)[0]
    assert sample.reference is not None and sample.source is sample.reference
    assert sample.reference.image.shape == (SIDE, SIDE, 3)
    assert (sample.reference.mask is None) == (kind == "points")
    ref = prepare_reference(sample, torch.Generator().manual_seed(0), fill="flat")
    inside = ref.mask > 0.5
    assert inside.any()
    assert torch.allclose(ref.subject[inside], sample.reference.image[inside])  # cut from the reference photo
    # The blue subject, not the grey background: its core is blue, and the mask stays on it (a pixel the
    # resize half-blended with the background may go either way, so the border is not held to the colour).
    core = inside.clone()
    core[1:-1, 1:-1] = inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:] & inside[1:-1, 1:-1]
    blue = torch.tensor([60, 120, 200]) / 255.0
    assert core.any() and (ref.subject[core] - blue).abs().max() < 0.05
    bluish = (sample.reference.image - blue).abs().max(-1).values < 0.25
    assert (inside & bluish).sum() / (inside | bluish).sum() > 0.9


def test_without_references_the_target_is_its_own_reference(tmp_path):
    sample = SubjectDataset(_dataset(tmp_path, paired=False), SIDE)[0]
    assert sample.reference is None
    assert sample.source.image is sample.image and sample.source.mask is sample.mask


def test_batches_carry_the_targets_subject_masks_where_the_loss_weight_reads_them(tmp_path):
    """A target's instance mask, or (an unpaired target clicked only) its selection; a paired target without
    masks/<stem>.png has none, and --subject-loss-weight refuses such a dataset before step 1."""
    from p3s_core.training import make_batch, train
    g = torch.Generator().manual_seed(0)
    unpaired = SubjectDataset(_dataset(tmp_path / "u", paired=False), SIDE)
    batch = make_batch(unpaired, [0], g, fill="flat")
    assert torch.equal(batch.target_masks[0], unpaired[0].mask)
    paired = SubjectDataset(_dataset(tmp_path / "p"), SIDE)
    assert paired.targets_without_masks() == ["a"]
    assert make_batch(paired, [0], g, fill="flat").target_masks is None
    with pytest.raises(ValueError, match=r"--subject-loss-weight > 0 needs the subject's mask in every target, "
                                         r"and 1 paired image\(s\) have none \(masks/a.png\): add those masks"):
        train(None, paired, TrainConfig(subject_loss_weight=4.0), tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()
    _, target_mask = _scene(SIDE, 2, (200, 120, 60))
    _png(tmp_path / "p" / "masks" / "a.png", target_mask)
    paired = SubjectDataset(tmp_path / "p", SIDE)
    assert paired.targets_without_masks() == []
    batch = make_batch(paired, [0], g, fill="flat")
    assert torch.equal(batch.target_masks[0], paired[0].mask)
    assert not torch.equal(batch.target_masks[0], batch.masks[0])  # the target's subject, not the reference's
    clicked = tmp_path / "c"
    _dataset(clicked, paired=False)
    (clicked / "masks" / "a.png").unlink()
    (clicked / "points").mkdir()
    (clicked / "points" / "a.json").write_text(json.dumps(
        {"width": SIDE, "height": SIDE, "positive": [{"x": 6, "y": 16}], "negative": []}))
    batch = make_batch(SubjectDataset(clicked, SIDE), [0], g, fill="flat")
    assert torch.equal(batch.target_masks[0], batch.masks[0])  # clicks only: the selection stands for the mask
    assert batch.target_masks[0].sum() > 0


@pytest.mark.parametrize("ref_mask,match", [
    ("missing", r"(?s)^P3S: dataset .*references/a.png has neither reference_masks/a.png nor reference_points/a.json"),
    ("wrong_size", r"(?s)^P3S: dataset .*reference_masks/a.png is 32x32 but references/a.png is 64x64"),
    ("empty", r"(?s)^P3S: dataset .*reference_masks/a.png has no white \(subject\) pixels"),
])
def test_a_wrong_or_missing_reference_mask_is_refused_when_the_dataset_is_made(tmp_path, ref_mask, match):
    root = _dataset(tmp_path, ref_mask=ref_mask)
    with pytest.raises(ValueError, match=match):
        SubjectDataset(root, SIDE)
    if ref_mask != "missing":  # unchecked, the same file fails when its sample loads
        lazy = SubjectDataset(root, SIDE, check=False)
        with pytest.raises(ValueError, match=r"^P3S: dataset: reference_masks/a.png"):
            lazy[0]


def _good_sample(root: Path, stem: str, x0: int = 2) -> None:
    image, mask = _scene(SIDE, x0, (200, 120, 60))
    _png(root / "images" / f"{stem}.png", image)
    _png(root / "masks" / f"{stem}.png", mask)
    (root / "captions").mkdir(exist_ok=True)
    (root / "captions" / f"{stem}.txt").write_text("a dog")


def test_every_bad_file_is_listed_at_once(tmp_path):
    for i in range(6):
        _good_sample(tmp_path, f"s{i}", x0=2 + i)
    (tmp_path / "images" / "s1.png").write_bytes(b"")                                   # 0 bytes
    data = (tmp_path / "images" / "s2.png").read_bytes()
    (tmp_path / "images" / "s2.png").write_bytes(data[: len(data) // 2])                 # truncated
    (tmp_path / "captions" / "s3.txt").write_bytes("un chien \xe9".encode("latin-1"))     # not UTF-8
    (tmp_path / "masks" / "s4.png").unlink()
    (tmp_path / "points").mkdir()
    (tmp_path / "points" / "s4.json").write_text('{"width": 32, "height": 32, "positive": [{"x": "left"}]}')
    (tmp_path / "masks" / "s5.png").write_bytes(b"not a png")
    (tmp_path / "captions" / "s0.txt").unlink()
    with pytest.raises(ValueError) as info:
        SubjectDataset(tmp_path, SIDE)
    msg = str(info.value)
    assert msg.startswith(f"P3S: dataset {tmp_path}: 6 problem(s), all listed")
    lines = [line for line in msg.splitlines() if line.startswith("  - ")]
    assert len(lines) == 6, msg
    for name, why in [("captions/s0.txt", "missing"), ("images/s1.png", "not a readable image"),
                      ("images/s2.png", "not a readable image"), ("captions/s3.txt", "not UTF-8 text"),
                      ("points/s4.json", "positive[0]"), ("masks/s5.png", "not a readable image")]:
        assert any(name in line and why in line for line in lines), (name, why, msg)
    assert "Traceback" not in msg


def _script():
    spec = importlib.util.spec_from_file_location("p3s_train_cli", REPO / "scripts" / "train_adapter.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_command_line_defaults_are_trainconfig_defaults_and_every_field_is_a_flag():
    ta = _script()
    required = ["--checkpoint", "c", "--clip-vision", "v", "--data", "d", "--output", "o.safetensors"]
    args = ta.build_parser().parse_args(required)
    fake = types.SimpleNamespace(TrainConfig=TrainConfig, TrainJob=lambda **kw: kw)
    assert ta.make_job(args, fake)["config"] == TrainConfig()
    custom = ["--steps", "7", "--alpha", "8", "--points-range", "2", "4", "--fill", "flat", "--min-depth", "0.5",
              "--weight-decay", "0.01", "--grad-clip", "0", "--precision", "bf16", "--prompt-template", "x {caption}"]
    config = ta.make_job(ta.build_parser().parse_args(required + custom), fake)["config"]
    assert (config.steps, config.alpha, config.points_range, config.fill, config.min_depth, config.weight_decay,
            config.grad_clip, config.precision, config.prompt_template) == \
        (7, 8.0, (2, 4), "flat", 0.5, 0.01, 0.0, "bf16", "x {caption}")
    flags = {a.dest for a in ta.build_parser()._actions}
    assert {f.name for f in fields(TrainConfig)} <= flags


def test_the_cosine_schedule_warms_up_decays_to_zero_and_is_refused_when_it_cannot_hold():
    """--lr-schedule cosine: a linear warm-up over --warmup-steps, then a cosine decay that ends at 0 on the
    last step; constant is --lr throughout. A function of the step alone, so resuming keeps it."""
    from p3s_core.training.config import lr_factor
    assert {lr_factor(TrainConfig(steps=10), k) for k in range(10)} == {1.0}
    cos = TrainConfig(steps=10, lr_schedule="cosine", warmup_steps=3)
    f = [lr_factor(cos, k) for k in range(10)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a > b for a, b in zip(f[3:], f[4:])) and f[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 6 / 7)))
    assert lr_factor(cos, 10) == pytest.approx(0.0)
    assert lr_factor(TrainConfig(steps=4, lr_schedule="cosine"), 0) == 1.0
    for bad, match in ((dict(lr_schedule="linear"), r"--lr-schedule must be one of constant, cosine, got 'linear'"),
                       (dict(lr_schedule="cosine", warmup_steps=10), r"--warmup-steps must be >= 0 and below "
                                                                      r"--steps \(10\), got 10"),
                       (dict(warmup_steps=2), r"--warmup-steps 2 needs --lr-schedule cosine")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(steps=10, **bad).validate()


def test_each_optimizer_step_runs_at_the_scheduled_learning_rate():
    """The stepper sets every parameter group's lr from the schedule before it steps (the read gain's group
    keeps its 10x)."""
    from p3s_core.adapter import AdapterSpec, P3SAdapter
    from p3s_core.training.config import lr_factor
    from p3s_core.training.distributed import DistContext
    from p3s_core.training.loop import GAIN_LR_SCALE, _Stepper
    adapter = P3SAdapter(AdapterSpec(family="sd15", rank=2, alpha=2.0, clip_width=8, ctx_dim=16,
                                     layers=[("input.1.0", 8)], read_gain=True))
    config = TrainConfig(steps=6, lr=1e-2, lr_schedule="cosine", warmup_steps=1)
    stepper = _Stepper(adapter, config, torch.device("cpu"), DistContext())
    assert len(stepper.optimizer.param_groups) == 2
    for k in range(6):
        loss = sum((p * p).sum() for p in adapter.parameters() if p.requires_grad) + 1.0
        stepper.step(loss, k)
        lrs = [g["lr"] for g in stepper.optimizer.param_groups]
        assert lrs == pytest.approx([1e-2 * lr_factor(config, k), 1e-2 * GAIN_LR_SCALE * lr_factor(config, k)])

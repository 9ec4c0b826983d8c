"""bench/selection.py --diagnose (``bench/selection_diagnose.py``): the rows and pictures that say where IoU is lost."""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from selection import run_family  # noqa: E402
from selection_diagnose import border_figures, finding  # noqa: E402

from p3s_core.features import rgb_to_lab  # noqa: E402


def _two_discs(outlined: bool):
    """Two overlapping discs of one colour (the right one in front), optionally with a dark outline on the
    front one. Returns (Lab [1, 3, h, w], back visible mask, front mask)."""
    yy, xx = np.mgrid[0:96, 0:128]
    back = (yy - 48) ** 2 + (xx - 48) ** 2 <= 30 ** 2
    front = (yy - 48) ** 2 + (xx - 80) ** 2 <= 30 ** 2
    img = np.full((96, 128, 3), (0.3, 0.5, 0.3), np.float32)
    img[back | front] = (0.8, 0.6, 0.3)
    if outlined:
        img[front & ~ndimage.binary_erosion(front, iterations=2)] = (0.35, 0.25, 0.1)
    img += np.random.default_rng(0).normal(0, 0.02, img.shape).astype(np.float32)
    lab = rgb_to_lab(torch.from_numpy(np.clip(img, 0, 1)).permute(2, 0, 1)[None])
    return lab, back & ~front, front


def test_border_figures_read_the_outline_and_the_missing_neck():
    plain, back, front = _two_discs(False)
    outlined, _, _ = _two_discs(True)
    o_plain, neck = border_figures(plain, back, front)
    o_line, _ = border_figures(outlined, back, front)
    assert o_line > 3 > o_plain  # an outline the split can act on, against none
    assert neck > 0.9  # overlapping by half: no neck between them
    apart = np.zeros_like(back)
    apart[:, 100:] = True
    assert np.isnan(border_figures(plain, back & ~ndimage.binary_dilation(apart, iterations=40), apart)[0])


def test_finding_names_the_kind_of_loss_and_the_look_alike_taken():
    lab, back, front = _two_discs(True)
    masks = [back, front]
    over = finding(3, 1, masks, back | front, lab)
    assert (over.kind, over.taken, over.scene, over.target) == ("over", 0, 3, 1)
    assert over.outline > 3 and "took 0" in over.row()
    under = finding(3, 1, masks, front & (np.arange(128) > 95)[None, :], lab)
    assert under.kind == "under" and under.taken is None and "took" not in under.row()
    assert finding(3, 1, masks, front, lab).iou == 1.0


def test_run_family_writes_one_picture_per_target_below_the_line(tmp_path):
    r = run_family("touching", 5, 256, 3, diagnose=tmp_path)
    found = r["findings"]
    assert found, "no target below the line in these scenes: pick another seed"
    assert all(f.iou < 0.75 for f in found)
    assert sum(i < 0.75 for i in r["iou"]) == len(found)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"touching_s3_{f.scene:03d}_{f.target}.png" for f in found)
    strip = np.asarray(Image.open(tmp_path / files[0]))
    assert strip.shape[1] % 5 == 0  # five panels side by side
    errors = strip[:, 4 * strip.shape[1] // 5:]  # the last: red selected but not the target, blue the reverse
    wrong = (errors[..., 1] == 0) & ((errors[..., 0] > 0) | (errors[..., 2] > 0))
    assert wrong.sum() > 0.05 * (errors.max(-1) > 0).sum()  # below the line: a visible share of it is wrong

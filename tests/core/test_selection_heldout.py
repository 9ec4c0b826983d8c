"""bench/selection_heldout.py: the second scene generator behind ``bench/selection.py --heldout``."""
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from selection import run_family  # noqa: E402
from selection_heldout import HELDOUT_FAMILIES, make_heldout  # noqa: E402


def _touch(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((ndimage.binary_dilation(a, iterations=2) & b).any())


def test_scenes_are_deterministic_with_disjoint_visible_masks():
    for fam in HELDOUT_FAMILIES:
        a, b = make_heldout(np.random.default_rng(4), fam, 192), make_heldout(np.random.default_rng(4), fam, 192)
        assert np.array_equal(a.image, b.image) and len(a.masks) == len(b.masks) >= 1
        assert a.image.shape == (192, 192, 3) and 0 <= a.image.min() and a.image.max() <= 1
        total = np.sum([m.astype(int) for m in a.masks], axis=0)
        assert total.max() == 1  # visible masks never overlap: later subjects occlude earlier ones


def test_touching_scenes_touch_and_separated_ones_do_not():
    rng = np.random.default_rng(11)
    for _ in range(6):
        sep = make_heldout(rng, "heldout_separated", 192).masks
        assert not any(_touch(a, b) for i, a in enumerate(sep) for b in sep[i + 1:])
        tou = make_heldout(rng, "heldout_touching", 192).masks
        if len(tou) >= 2:
            assert all(any(_touch(a, b) for j, b in enumerate(tou) if j != i) for i, a in enumerate(tou))


def test_bench_runs_the_held_out_families_apart_from_the_tuned_ones():
    r = run_family("heldout_separated", 3, 192, 0)
    assert r["iou"] and len(r["iou"]) == len(r["base"]) and r["refused"] == 0
    assert all(0 <= x <= 1 for x in r["iou"])

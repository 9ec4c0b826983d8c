"""The selection's guard against a region that leaks into a background of the subject's colour."""

import numpy as np
import torch

from p3s_core import rngr
from p3s_core.similarity import otsu_threshold


def _score_map(leak: bool) -> np.ndarray:
    """A clicked subject (score 0.9, a steep 3 px edge) on a background scoring 0; with ``leak``, a broad
    background area joined to it that scores a little above Otsu's threshold here and there (a
    background of similar colour)."""
    yy, xx = np.mgrid[0:128, 0:128]
    d = np.hypot(yy - 64, xx - 40)
    up = np.clip((18 - d) / 3, 0, 1) * 0.9
    if leak:
        rng = np.random.default_rng(0)
        area = xx >= 50
        up[area] = np.maximum(up[area], rng.uniform(0.15, 0.55, int(area.sum())))
    return up.astype(np.float32)


def test_a_region_leaked_into_a_similar_background_is_cut_back_to_the_subject():
    subject = _score_map(False) > 0.45
    for leak in (False, True):
        up = _score_map(leak)
        t0 = otsu_threshold(torch.from_numpy(up).flatten())
        pos = [(64, 40)]
        region = rngr._regions_at(up > t0, pos)
        tight = rngr._stable_level(up, t0, pos, region)
        if not leak:  # a subject with a steep edge keeps Otsu's region
            assert tight is None
            continue
        # Otsu's region holds the whole similar background (precision well below 0.5) ...
        assert (region & subject).sum() / region.sum() < 0.5
        # ... the most stable higher level is the subject again.
        assert tight is not None
        iou = (tight & subject).sum() / (tight | subject).sum()
        assert iou > 0.8, iou

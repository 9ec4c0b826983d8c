"""A random walker (Grady 2006) on the colour image: which of two seed sets a walk from each pixel reaches first.

The split (``split``) finds where two touching look-alikes meet from the region's shape: a marker flood
over its thickness. Where they overlap, the shape has no neck and the flood's border runs wherever the
water met. The image still shows the border, as a faint outline or a change of texture; a random walker
whose steps are cheap inside a body and dear across a colour edge follows it, and between the bodies'
cores it re-decides only the band where the flood was unsure.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

# Edge weight exp(-BETA x squared Lab step / its mean over the region): 4-16 within 0.002 of 8 on touching
# look-alikes (bench/selection.py, seeds 0 and 1); unsmoothed Lab beat a 0.7-1.5 px blur by 0.002-0.005.
BETA = 8.0


def walk(keep: np.ndarray, lab: np.ndarray, fg: np.ndarray, bg: np.ndarray, beta: float = BETA) -> np.ndarray | None:
    """[h, w] probability, for each pixel of ``keep`` ([h, w] bool), that a random walk on the 4-connected
    pixels of ``keep`` reaches a pixel of ``fg`` before one of ``bg`` (both [h, w] bool); ``lab`` [3, h, w].
    None when either seed set is empty or every pixel is a seed."""
    fg, bg = fg & keep, bg & keep & ~fg
    if not fg.any() or not bg.any():
        return None
    n = int(keep.sum())
    idx = np.full(keep.shape, -1, np.int64)
    idx[keep] = np.arange(n)
    ends, steps = [], []
    for a, b in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1, :], np.s_[1:, :])):
        ok = keep[a] & keep[b]
        ends.append((idx[a][ok], idx[b][ok]))
        steps.append(((lab[:, a[0], a[1]] - lab[:, b[0], b[1]]) ** 2).sum(0)[ok])
    scale = max(float(np.concatenate(steps).mean()), 1e-12)
    i = np.concatenate([e[0] for e in ends])
    j = np.concatenate([e[1] for e in ends])
    w = np.exp(-beta * np.concatenate(steps) / scale) + 1e-6  # never 0: the graph stays connected
    weights = sparse.coo_matrix((np.concatenate([w, w]), (np.concatenate([i, j]), np.concatenate([j, i]))),
                                shape=(n, n)).tocsr()
    laplacian = sparse.diags(np.asarray(weights.sum(1)).ravel()) - weights
    seed = (fg | bg)[keep]
    free = ~seed
    if not free.any():
        return None
    x = fg[keep].astype(np.float64)
    lap_free = laplacian[free]
    x[free] = spsolve(lap_free[:, free].tocsc(), -(lap_free[:, seed] @ x[seed]))
    out = np.zeros(keep.shape)
    out[keep] = x
    return out

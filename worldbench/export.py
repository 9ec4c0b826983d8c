"""Export world images as a dataset for ``scripts/train_adapter.py``.

Layout (the trainer's, docs/training.md): ``images/<stem>.png``, ``captions/<stem>.txt`` and
``masks/<stem>.png`` (white = THE subject), plus paired references ``references/<stem>.png`` with
``reference_masks/<stem>.png``: the same identity in another scene, usually among look-alikes (what an
adapter learns to transfer from). A ``manifest.jsonl`` keeps every item's identities and scenes.

Only identities of the chosen split are drawn (``train`` by default), so an adapter trained on the
export never sees the benchmark's ``test`` identities.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from . import world
from .progress import progress


def _png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path)


def export(out: Path, count: int, split: str = "train", side: int = 64, start: int = 0) -> Path:
    """Writes ``count`` pairs of ``split`` to ``out``; returns ``out``."""
    out = Path(out)
    for sub in ("images", "captions", "masks", "references", "reference_masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.jsonl", "w") as man:
        for k in progress(range(start, start + count), desc=f"export {split}"):
            ref, ia, tgt, ib = world.pair(split, k, side)
            stem = f"{split}_{k:06d}"
            _png(tgt.image, out / "images" / f"{stem}.png")
            (out / "captions" / f"{stem}.txt").write_text(tgt.caption + "\n")
            _png((tgt.mask(ib) * 255).astype(np.uint8), out / "masks" / f"{stem}.png")
            _png(ref.image, out / "references" / f"{stem}.png")
            _png((ref.mask(ia) * 255).astype(np.uint8), out / "reference_masks" / f"{stem}.png")
            man.write(json.dumps({"stem": stem, "identity": list(tgt.identities[ib].key),
                                  "scene": tgt.scene.scene, "reference_scene": ref.scene.scene,
                                  "reference_subjects": [list(i.key) for i in ref.identities],
                                  "target_subjects": [list(i.key) for i in tgt.identities]}) + "\n")
    return out

"""worldbench: a small procedural world where the truth is known, a world model the project trains on it,
and an attribute reader, to measure whether P3S moves the *clicked* subject (not its look-alike) into a
new scene (issue #10). The P3S pack never imports this package.

Python API (lazy; nothing heavy is imported until used):

    import worldbench
    cfg = worldbench.get_config("default")        # or "quick" (CI), "gpu"
    case = worldbench.test_case("test", 3)        # reference with look-alikes, click, prompt, truth
    f = worldbench.files(cfg)                     # f.checkpoint, f.clip_vision, f.vae, f.reader, f.ready()
    worldbench.REGISTRAR                          # custom-node folder that registers the world family
    reader = worldbench.reader(cfg)               # reader.read(image) -> Reading(scene, subjects)
    worldbench.export_dataset(out_dir, 2000)      # images/ captions/ masks/ references/ reference_masks/

World drawing and the reader are plain numpy/torch/Pillow; training, the loaders and the quality gate
use ComfyUI (``worldbench.comfy_env``). Command line: ``python -m worldbench --help``.
"""
from __future__ import annotations

from pathlib import Path

from .config import WORLD_VERSION, WorldConfig, get as get_config  # noqa: F401
from .world import (ALL_IDENTITIES, CLASSES, COLLARS, COLOURS, PATTERNS, SCENES, Case, Identity,  # noqa: F401
                    Render, pair, prompt, render, test_case, training_image)

REGISTRAR = Path(__file__).resolve().parent / "world_registrar"


def files(cfg: WorldConfig | None = None):
    """Paths of the trained world model files of ``cfg`` (default config when None)."""
    from .pipeline import files as _files
    return _files(cfg or get_config())


_READERS: dict = {}


def reader(cfg: WorldConfig | None = None):
    """The trained reader of ``cfg`` (cached per config)."""
    from .pipeline import load_reader
    cfg = cfg or get_config()
    if cfg.key() not in _READERS:
        _READERS[cfg.key()] = load_reader(cfg)
    return _READERS[cfg.key()]


def export_dataset(out, count: int, split: str = "train", side: int = 64):
    """Adapter-training dataset of ``count`` pairs (see :mod:`worldbench.export`)."""
    from .export import export
    return export(Path(out), count, split, side)

"""tqdm progress bars (ComfyUI ships tqdm); P3S_WORLD_QUIET=1 turns them off (tests, logs)."""
from __future__ import annotations

import os
from typing import Iterable


def progress(it: Iterable, desc: str = "", total: int | None = None):
    from tqdm import tqdm
    return tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True, mininterval=1.0,
                disable=os.environ.get("P3S_WORLD_QUIET") == "1")

"""P3S core: plain torch + numpy implementation of P3S-Diffusion (arXiv 2412.19533).

Never imports comfy: the ComfyUI layer lives in ``nodes/``. Data flows web -> nodes -> p3s_core.
"""

__all__ = ["points", "features", "rngr", "schedule", "injection", "adapter", "losses"]

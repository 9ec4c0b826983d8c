"""Fused attention that also returns the log-sum-exp of each query's scores, where torch has such a kernel.

Attention over two key sets can be merged exactly from the two partial results and their log-sum-exps
(``merge``): the fused read of appended subject tokens (``injection.subject_read``) runs the image's own
keys through the same flash / memory-efficient kernel plain attention uses, instead of the math path an
additive mask forces. torch exposes the LSE only through private ops, so every candidate is checked once
per (device type, dtype) against the math path on a small input, and ``lse_attention`` returns None when
none qualifies: the caller then uses the biased read.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable

import torch

log = logging.getLogger("P3S")

# A kernel: (q, k, v [B, H, L, d], scale) -> (out [B, H, L, d], lse [B, H, L] in float32).
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def _cpu_flash(q, k, v, scale):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
    return out, lse


def _cuda_flash(q, k, v, scale):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
    return out, lse


def _cuda_efficient(q, k, v, scale):
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False,
                                                                       scale=scale)[:2]
    return out, lse[..., : q.shape[2]]  # some versions pad the query dimension of the LSE to a multiple of 32


CANDIDATES = {"cpu": (("flash_for_cpu", _cpu_flash),),
              "cuda": (("flash", _cuda_flash), ("efficient", _cuda_efficient))}


def math_attention(q, k, v, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference result every kernel is checked against (float32 scores)."""
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    lse = s.logsumexp(dim=-1)
    return ((s - lse[..., None]).exp() @ v.float()).to(q.dtype), lse


def _agrees(kernel: Kernel, device: str, dtype: torch.dtype) -> bool:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 40, generator=g).to(device, dtype) for n in (37, 53, 53))
    try:
        with torch.no_grad():
            out, lse = kernel(q, k, v, 40 ** -0.5)
    except (RuntimeError, NotImplementedError, AttributeError, TypeError) as e:
        log.debug("P3S: fused attention candidate unavailable: %s", e)
        return False
    want_out, want_lse = math_attention(q, k, v, 40 ** -0.5)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    return (tuple(lse.shape) == tuple(want_lse.shape) and (lse.float() - want_lse).abs().max().item() <= tol
            and (out.float() - want_out.float()).abs().max().item() <= tol)


# A cache of what this torch build can do (a capability, fixed for the process), not of any run's state.
@functools.lru_cache(maxsize=None)
def _kernel_for(device: str, dtype: torch.dtype) -> Kernel | None:
    for name, kernel in CANDIDATES.get(device, ()):
        if _agrees(kernel, device, dtype):
            log.debug("P3S: fused subject read uses %s attention on %s/%s", name, device, dtype)
            return kernel
    log.info("P3S: no fused attention with log-sum-exp on %s/%s; the subject read uses the masked path",
             device, dtype)
    return None


def lse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Fused attention of q over (k, v), [B, H, L, d], with its float32 LSE [B, H, L]; None when this
    device/dtype has no checked kernel, or when gradients are needed (the LSE outputs of these kernels
    are not differentiable, so training keeps the masked path and exact gradients)."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return None
    kernel = _kernel_for(q.device.type, q.dtype)
    if kernel is None:
        return None
    try:
        out, lse = kernel(q, k, v, scale)
    except (RuntimeError, NotImplementedError) as e:  # a head size or layout this kernel does not take
        log.debug("P3S: fused attention refused %s: %s", tuple(q.shape), e)
        return None
    return out, lse.float()


def merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of two key sets from the attention over each: exact softmax algebra.

    ``lse_b`` may be -inf (no key of set b): the result is then set a's, with no NaN.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    wa = (lse_a - lse).exp()[..., None]
    wb = torch.nan_to_num((lse_b - lse).exp(), nan=0.0)[..., None]
    return out_a.float() * wa + out_b.float() * wb, lse

"""Self-attention computed by someone else over the image's own keys, merged with P3S's appended keys.

When another pack replaces a block's self-attention (an attn1 *replace*: Self-Attention Guidance records
the attention map there, Perturbed-Attention Guidance returns ``v``), P3S hands that replace only the
image's own tokens and adds its appended subject tokens afterwards. One softmax over [own; appended]
keys splits exactly into the two partial softmaxes weighted by their partition functions:

    out = (Z_own * out_own + Z_app * out_app) / (Z_own + Z_app)

so when the replace computes plain attention the merge equals P3S's biased read over all keys, and
when it computes something else (PAG's identity map) the subject tokens still get their usual share of
each query's attention.
"""
from __future__ import annotations

import torch

_CHUNK = 2 ** 24  # score elements per chunk of queries when the own keys' log-partition is computed


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, inner = t.shape
    return t.reshape(b, n, heads, inner // heads).transpose(1, 2).float()


def _log_partition(qh: torch.Tensor, kh: torch.Tensor, scale: float) -> torch.Tensor:
    """log sum_j exp(q . k_j * scale) for every query: [B, h, Tq], chunked over queries to bound memory."""
    b, h, tq, _ = qh.shape
    step = max(1, _CHUNK // max(1, b * h * kh.shape[2]))
    out = torch.empty(b, h, tq, dtype=torch.float32, device=qh.device)
    for i in range(0, tq, step):
        out[:, :, i:i + step] = torch.logsumexp(qh[:, :, i:i + step] @ kh.transpose(-1, -2) * scale, dim=-1)
    return out


def merge_appended(q: torch.Tensor, k_own: torch.Tensor, out_own: torch.Tensor, k_app: torch.Tensor,
                   v_app: torch.Tensor, heads: int, bias: torch.Tensor) -> torch.Tensor:
    """``out_own`` (attention over ``k_own``, made elsewhere) merged with the appended keys ``k_app``/``v_app``.

    q [B, Tq, inner], k_own [B, T, inner], out_own [B, Tq, inner], k_app/v_app [B, N, inner], bias [B, N]
    (log weight, -inf for padding). Rows whose appended keys are all -inf return ``out_own`` unchanged.
    """
    return merge_groups(q, k_own, out_own, [(q, k_app, v_app, bias)], heads)


def merge_groups(q: torch.Tensor, k_own: torch.Tensor, out_own: torch.Tensor,
                 groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]], heads: int
                 ) -> torch.Tensor:
    """``merge_appended`` for several groups of appended keys, each read with its own queries:
    ``groups`` = [(q_app, k_app, v_app, bias)]; one softmax over the own keys and every group."""
    qh, koh = _heads(q, heads), _heads(k_own, heads)
    scale = qh.shape[-1] ** -0.5
    lse_own = _log_partition(qh, koh, scale)
    own = _heads(out_own, heads)
    outs, lses = [own], [lse_own]
    for q_app, k_app, v_app, bias in groups:
        qah, kah, vah = (_heads(t, heads) for t in (q_app, k_app, v_app))
        scores = qah @ kah.transpose(-1, -2) * scale + bias.to(qh.device, torch.float32)[:, None, None, :]
        lse_app = torch.logsumexp(scores, dim=-1)
        probs = torch.nan_to_num(torch.exp(scores - lse_app[..., None]), nan=0.0)  # all -inf rows: no share
        outs.append(probs @ vah)
        lses.append(lse_app)
    total = torch.logsumexp(torch.stack(lses), dim=0)
    merged = sum(torch.nan_to_num(torch.exp(lse - total), nan=0.0)[..., None] * o for lse, o in zip(lses, outs))
    b, tq, inner = out_own.shape
    return merged.transpose(1, 2).reshape(b, tq, inner).to(out_own.dtype)

"""The fused read of appended subject tokens equals the biased (masked) read (pure core, no comfy)."""
import math

import pytest
import torch
import torch.nn.functional as F

from p3s_core import injection, lse_attention


def _case(b, t, heads, d, refs, counts, rows, seed=0, dtype=torch.float32):
    """q/k/v [B, T(+N), heads*d] as ComfyUI's attention receives them, with each row's reference tokens
    appended exactly as the attn1 patch appends them (padding filled with zeros)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, heads * d, generator=g)
    k = torch.randn(b, t, heads * d, generator=g)
    v = torch.randn(b, t, heads * d, generator=g)
    n = max(counts)
    valid = torch.zeros(refs, n, dtype=torch.bool)
    for r, c in enumerate(counts):
        valid[r, :c] = True
    ref_k = torch.randn(refs, n, heads * d, generator=g) * valid[..., None]
    ref_v = torch.randn(refs, n, heads * d, generator=g) * valid[..., None]
    rows = torch.tensor(rows)
    k = injection.append_tokens(k, ref_k, rows)
    v = injection.append_tokens(v, ref_v, rows)
    return q.to(dtype), k.to(dtype), v.to(dtype), valid, rows


CASES = {  # b, t, heads, d, refs, counts, rows
    "one_ref_cond_only": (2, 64, 4, 16, 1, [11], [0, -1]),
    "one_ref_every_row": (2, 48, 2, 40, 1, [9], [0, 0]),
    "cfg_1": (1, 30, 8, 8, 1, [30], [0]),
    "padding_two_refs": (4, 40, 4, 16, 2, [5, 17], [0, 1, -1, -1]),
    "padding_inside": (3, 25, 2, 24, 2, [1, 12], [1, 0, 1]),
    "no_row_reads": (2, 20, 2, 16, 1, [6], [-1, -1]),
    "odd_head_dim": (2, 33, 3, 13, 1, [7], [-1, 0]),
}


@pytest.mark.parametrize("weight", [1.0, 0.35, 2.5, 1e-3])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_read_equals_biased_read(case, weight):
    b, t, heads, d, refs, counts, rows = CASES[case]
    q, k, v, valid, rows = _case(b, t, heads, d, refs, counts, rows, seed=len(case))
    part = injection.Appended(t, rows, valid, weight)
    fused = injection.fused_subject_read(q, k, v, heads, [part])
    assert fused is not None, "the CPU build of torch has a fused kernel with LSE: the fused path must run"
    biased = injection.biased_attention(q, k, v, heads, t, part.bias())
    assert (fused - biased).abs().max().item() <= 1e-4
    assert (injection.subject_read(q, k, v, heads, [part]) - biased).abs().max().item() <= 1e-4


def test_weight_zero_and_rows_without_reference_read_only_their_own_keys():
    q, k, v, valid, rows = _case(3, 40, 4, 16, 1, [13], [0, -1, 0])
    own = F.scaled_dot_product_attention(*(t[:, :40].view(3, -1, 4, 16).transpose(1, 2) for t in (q, k, v)))
    own = own.transpose(1, 2).reshape(3, 40, 64)
    zero = injection.subject_read(q, k, v, 4, [injection.Appended(40, rows, valid, 0.0)])
    assert (zero - own).abs().max().item() <= 1e-5
    one = injection.subject_read(q, k, v, 4, [injection.Appended(40, rows, valid, 1.0)])
    assert (one[1] - own[1]).abs().max().item() <= 1e-5  # the uncond row ignores the reference
    assert (one[0] - own[0]).abs().max().item() > 1e-3   # a reading row does not


def test_weight_one_is_plain_concatenation():
    q, k, v, valid, rows = _case(2, 36, 2, 16, 1, [36], [0, 0])  # no padding: every appended token is real
    concat = F.scaled_dot_product_attention(*(t.view(2, -1, 2, 16).transpose(1, 2) for t in (q, k, v)))
    got = injection.subject_read(q, k, v, 2, [injection.Appended(36, rows, valid, 1.0)])
    assert (got - concat.transpose(1, 2).reshape(2, 36, 32)).abs().max().item() <= 1e-5


def test_two_segments_from_two_patches():
    """Two P3S nodes on one MODEL append one after the other; each keeps its own weight."""
    q, k, v, valid_a, rows_a = _case(2, 30, 2, 16, 1, [8], [0, -1], seed=1)
    g = torch.Generator().manual_seed(5)
    extra_k, extra_v = torch.randn(2, 2, 5, 32, generator=g)
    valid_b = torch.tensor([[True] * 4 + [False]])
    k, v = torch.cat([k, extra_k], 1), torch.cat([v, extra_v], 1)
    parts = [injection.Appended(30, rows_a, valid_a, 0.6), injection.Appended(38, torch.tensor([0, 0]), valid_b, 1.7)]
    fused = injection.fused_subject_read(q, k, v, 2, parts)
    offset, bias = injection.merged_bias(parts, k.shape[1])
    assert fused is not None
    assert (fused - injection.biased_attention(q, k, v, 2, offset, bias)).abs().max().item() <= 1e-4


def test_unusual_layout_falls_back_to_the_biased_read():
    """Keys after the appended tokens (another pack appended more): the fused path declines, same result."""
    q, k, v, valid, rows = _case(2, 20, 2, 8, 1, [6], [0, -1])
    k, v = torch.cat([k, k[:, :3]], 1), torch.cat([v, v[:, :3]], 1)
    part = injection.Appended(20, rows, valid, 0.8)
    assert injection.fused_subject_read(q, k, v, 2, [part]) is None
    full = torch.zeros(2, k.shape[1])
    full[:, 20:26] = part.bias()
    want = injection.biased_attention(q, k, v, 2, 0, full)
    assert (injection.subject_read(q, k, v, 2, [part]) - want).abs().max().item() <= 1e-6


def test_gradients_use_the_exact_masked_path():
    q, k, v, valid, rows = _case(2, 16, 2, 8, 1, [5], [0, -1])
    k.requires_grad_(True)
    part = injection.Appended(16, rows, valid, 0.5)
    assert injection.fused_subject_read(q, k, v, 2, [part]) is None
    injection.subject_read(q, k, v, 2, [part]).sum().backward()
    assert k.grad is not None and k.grad[:, 16:21].abs().sum() > 0


def test_merge_is_exact_softmax_algebra():
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(1, 2, 7, 8, generator=g), torch.randn(1, 2, 11, 8, generator=g), torch.randn(1, 2, 11, 8, generator=g)
    whole = lse_attention.math_attention(q, k, v, 8 ** -0.5)
    a = lse_attention.math_attention(q, k[:, :, :6], v[:, :, :6], 8 ** -0.5)
    b = lse_attention.math_attention(q, k[:, :, 6:], v[:, :, 6:], 8 ** -0.5)
    out, lse = lse_attention.merge(*a, *b)
    assert (out - whole[0]).abs().max().item() <= 1e-5 and (lse - whole[1]).abs().max().item() <= 1e-5
    out, lse = lse_attention.merge(*a, b[0], torch.full_like(b[1], -math.inf))  # an empty second set
    assert torch.isfinite(out).all() and (out - a[0]).abs().max().item() <= 1e-6

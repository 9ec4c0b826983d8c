"""Attention over the own keys computed elsewhere + P3S's appended keys == one softmax over all keys."""

import math

import torch
import torch.nn.functional as F

from p3s_core import split_attention
from p3s_core.injection import biased_attention


def _plain(q, k, v, heads):
    b, t, inner = q.shape
    qh, kh, vh = (x.reshape(b, -1, heads, inner // heads).transpose(1, 2) for x in (q, k, v))
    return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, t, inner)


def _case(seed=0, b=3, tq=12, t=12, n=5, heads=2, d=8):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, m, heads * d, generator=g) for m in (tq, t + n, t + n))
    bias = torch.full((b, n), math.log(0.7))
    bias[0, 3:] = float("-inf")      # padding
    bias[2] = float("-inf")          # a row that reads nothing (the unconditional chunk)
    return q, k, v, bias, t, heads


def test_plain_own_attention_merged_equals_the_biased_read_over_all_keys():
    q, k, v, bias, t, heads = _case()
    out_own = _plain(q, k[:, :t], v[:, :t], heads)
    merged = split_attention.merge_appended(q, k[:, :t], out_own, k[:, t:], v[:, t:], heads, bias)
    torch.testing.assert_close(merged, biased_attention(q, k, v, heads, t, bias), atol=1e-5, rtol=1e-5)
    assert torch.equal(merged[2], out_own[2])  # nothing to read: the own output exactly


def test_merge_is_chunked_and_keeps_a_foreign_output():
    q, k, v, bias, t, heads = _case(seed=1, tq=40, t=40)
    old = split_attention._CHUNK
    try:
        split_attention._CHUNK = 7  # many small chunks of queries give the same log-partition
        out_own = _plain(q, k[:, :t], v[:, :t], heads)
        chunked = split_attention.merge_appended(q, k[:, :t], out_own, k[:, t:], v[:, t:], heads, bias)
    finally:
        split_attention._CHUNK = old
    torch.testing.assert_close(chunked, biased_attention(q, k, v, heads, t, bias), atol=1e-5, rtol=1e-5)
    # a replace that is not attention (PAG returns v): the subject still takes its usual share of each query
    identity = v[:, :t]
    merged = split_attention.merge_appended(q, k[:, :t], identity, k[:, t:], v[:, t:], heads, bias)
    assert torch.equal(merged[2], identity[2])
    assert (merged[1] - identity[1]).abs().max() > 1e-3
    assert torch.isfinite(merged).all()

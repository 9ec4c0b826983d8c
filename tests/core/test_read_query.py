"""An adapter's read deltas: the subject tokens are read with queries of their own (pure core, no comfy).

The reference result is one softmax per row over [own keys scored with q; the row's real subject tokens scored
with q' plus log(weight)], written out by hand; the fused read, the float32 split read (training) and the
merge behind other packs' attn1 replaces must all equal it.
"""
import math

import pytest
import torch

from p3s_core import injection, lse_attention, split_attention
from p3s_core.adapter import AdapterSpec, P3SAdapter, load_adapter, read_adapter_header, save_adapter

from test_fused_read import _case  # noqa: E402  (tests/core is on sys.path under pytest)

LAYERS = [("input.1.0", 32), ("middle.0.0", 64)]


def _by_hand(q, qr, k, v, heads, t, valid, rows, weight):
    b, tq, inner = q.shape
    d = inner // heads
    out = torch.empty(b, tq, inner)
    for i in range(b):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            s_own = q[i, :, sl] @ k[i, :t, sl].T * d ** -0.5
            vals = [v[i, :t, sl]]
            scores = [s_own]
            if rows[i] >= 0 and weight > 0:
                n = int(valid[rows[i]].sum())
                scores.append(qr[i, :, sl] @ k[i, t:t + n, sl].T * d ** -0.5 + math.log(weight))
                vals.append(v[i, t:t + n, sl])
            p = torch.softmax(torch.cat(scores, 1), dim=1)
            out[i, :, sl] = p @ torch.cat(vals, 0)
    return out


def _shift(q):
    return q * 1.5 + 0.3  # any map of the queries will do


@pytest.mark.parametrize("weight", [1.0, 0.4, 3.0])
@pytest.mark.parametrize("rows", [[0, -1], [0, 0], [1, 0]])
def test_read_query_is_used_for_the_subject_tokens_only(weight, rows):
    q, k, v, valid, rows_t = _case(2, 24, 2, 8, 2, [7, 4], rows, seed=3)
    want = _by_hand(q, _shift(q), k, v, 2, 24, valid, rows_t, weight)
    part = injection.Appended(24, rows_t, valid, weight, _shift)
    fused = injection.fused_subject_read(q, k, v, 2, [part])
    assert fused is not None
    assert (fused - want).abs().max().item() <= 1e-4
    assert (injection.subject_read(q, k, v, 2, [part]) - want).abs().max().item() <= 1e-4
    split = injection._split_read(q, k, v, 2, [part], lse_attention.math_attention)
    assert (split - want).abs().max().item() <= 1e-4
    plain = injection.subject_read(q, k, v, 2, [injection.Appended(24, rows_t, valid, weight)])
    assert (plain - want).abs().max().item() > 1e-3  # the query changed what the subject tokens give


def test_read_query_gets_gradients_on_the_math_path():
    q, k, v, valid, rows = _case(2, 16, 2, 8, 1, [5], [0, -1])
    scale = torch.ones((), requires_grad=True)
    part = injection.Appended(16, rows, valid, 1.0, lambda x: x * scale)
    out = injection.subject_read(q, k, v, 2, [part])
    want = _by_hand(q, q, k, v, 2, 16, valid, rows, 1.0)
    assert (out - want).abs().max().item() <= 1e-4
    out.square().sum().backward()
    assert scale.grad is not None and scale.grad.abs().item() > 0


def test_read_query_behind_another_packs_replace_merges_exactly():
    """own_tokens_only's merge with one group per part equals the one-softmax read."""
    q, k, v, valid, rows = _case(3, 20, 2, 8, 1, [6], [0, -1, 0], seed=5)
    part = injection.Appended(20, rows, valid, 0.7, _shift)
    b, t, inner = q.shape
    qh, kh, vh = (x.reshape(b, -1, 2, inner // 2).transpose(1, 2) for x in (q, k[:, :20], v[:, :20]))
    out_own = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, t, inner)
    merged = split_attention.merge_groups(q, k[:, :20], out_own,
                                          [(_shift(q), k[:, 20:], v[:, 20:], part.bias())], 2)
    want = _by_hand(q, _shift(q), k, v, 2, 20, valid, rows, 0.7)
    assert (merged - want).abs().max().item() <= 1e-4
    assert torch.equal(merged[1], out_own[1])  # the row that reads nothing


def test_adapter_read_deltas_start_at_identity_round_trip_and_old_headers_load(tmp_path):
    spec = AdapterSpec(family="sd15", rank=4, alpha=4.0, clip_width=48, ctx_dim=40, layers=LAYERS, read_rank=3)
    a = P3SAdapter(spec)
    q = torch.randn(2, 9, 32)
    assert a.has_read("input.1.0") and not a.has_read("output.1.0")
    assert torch.equal(a.read_query("input.1.0", q), q)  # fresh: up is zero
    assert "read.input.1.0.down.weight" in a.state_dict()
    assert sum(p.numel() for p in a.parameters()) == spec.parameter_count()
    with torch.no_grad():
        for name, p in a.named_parameters():
            if name.startswith("read.") and name.endswith("up.weight"):
                p.normal_(std=0.2)
    moved = a.read_query("input.1.0", q)
    assert (moved - q).abs().max().item() > 1e-3
    path = tmp_path / "read.safetensors"
    save_adapter(a, path)
    assert read_adapter_header(path).read_rank == 3
    b = load_adapter(path)
    assert torch.equal(b.read_query("input.1.0", q), moved)
    with pytest.raises(ValueError, match="read layer 'input.1.0' expects width 32"):
        b.read_query("input.1.0", torch.randn(1, 4, 64))
    # an adapter without read deltas keeps the header it always had (no read_rank key) and reads plainly
    old = P3SAdapter(AdapterSpec(family="sd15", rank=4, alpha=4.0, clip_width=48, ctx_dim=40, layers=LAYERS))
    assert "read_rank" not in old.spec.to_metadata() and not old.has_read("input.1.0")
    save_adapter(old, tmp_path / "old.safetensors")
    assert load_adapter(tmp_path / "old.safetensors").spec.read_rank == 0
    with pytest.raises(ValueError, match="read_rank must be in 0..1024"):
        AdapterSpec(family="sd15", rank=4, alpha=4.0, clip_width=48, ctx_dim=40, layers=LAYERS, read_rank=-1)


# ---- a learned read gain: a log-gain on the subject tokens' bias, i.e. a per-layer multiplier of the weight ----
@pytest.mark.parametrize("query", [None, _shift])
def test_a_read_gain_of_log_g_is_weight_times_g_on_every_path(query):
    q, k, v, valid, rows = _case(2, 24, 2, 8, 2, [7, 4], [0, 1], seed=4)
    gain = torch.tensor(math.log(2.5))
    want = _by_hand(q, query(q) if query else q, k, v, 2, 24, valid, rows, 0.8 * 2.5)
    part = injection.Appended(24, rows, valid, 0.8, query, gain)
    assert part.own_read
    for got in (injection.fused_subject_read(q, k, v, 2, [part]), injection.subject_read(q, k, v, 2, [part]),
                injection._split_read(q, k, v, 2, [part], lse_attention.math_attention)):
        assert got is not None and (got - want).abs().max().item() <= 1e-4
    if query is None:  # the masked fallback (and other packs' replaces, via bias()) take the gain's value
        offset, bias = injection.merged_bias([part], k.shape[1])
        assert (injection.biased_attention(q, k, v, 2, offset, bias) - want).abs().max().item() <= 1e-4
    plain = injection.subject_read(q, k, v, 2, [injection.Appended(24, rows, valid, 0.8, query)])
    assert (plain - want).abs().max().item() > 1e-3


def test_a_read_gain_gets_gradients_and_weight_zero_reads_nothing():
    q, k, v, valid, rows = _case(2, 16, 2, 8, 1, [5], [0, -1])
    gain = torch.zeros((), requires_grad=True)
    out = injection.subject_read(q, k, v, 2, [injection.Appended(16, rows, valid, 1.0, None, gain)])
    out.square().sum().backward()
    assert gain.grad is not None and gain.grad.abs().item() > 0
    off = injection.subject_read(q, k, v, 2, [injection.Appended(16, rows, valid, 0.0, None, torch.tensor(3.0))])
    own = _by_hand(q, q, k, v, 2, 16, valid, torch.tensor([-1, -1]), 1.0)
    assert (off - own).abs().max().item() <= 1e-4


def test_adapter_read_gain_starts_at_zero_round_trips_and_is_absent_from_old_headers(tmp_path):
    spec = AdapterSpec(family="sd15", rank=4, alpha=4.0, clip_width=48, ctx_dim=40, layers=LAYERS, read_gain=True)
    a = P3SAdapter(spec)
    assert a.read_log_gain("middle.0.0").item() == 0.0 and a.read_log_gain("output.1.0") is None
    assert sum(p.numel() for p in a.parameters()) == spec.parameter_count()
    assert spec.to_metadata()["read_gain"] == "1"
    with torch.no_grad():
        a.read_gain.copy_(torch.tensor([0.5, -0.25]))
    save_adapter(a, tmp_path / "gain.safetensors")
    b = load_adapter(tmp_path / "gain.safetensors")
    assert b.spec.read_gain and b.read_log_gain("input.1.0").item() == 0.5 and b.read_log_gain("middle.0.0").item() == -0.25
    old = P3SAdapter(AdapterSpec(family="sd15", rank=4, alpha=4.0, clip_width=48, ctx_dim=40, layers=LAYERS))
    assert "read_gain" not in old.spec.to_metadata() and old.read_log_gain("input.1.0") is None
    assert "read_gain" not in old.state_dict()
    meta = {**spec.to_metadata(), "read_gain": "yes"}
    with pytest.raises(ValueError, match="unreadable P3S metadata .*read_gain is 'yes', expected 0 or 1"):
        AdapterSpec.from_metadata(meta, "bad.safetensors")

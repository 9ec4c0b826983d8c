"""An adapter's subject cross-attention (p3s_core/subject_attention.py; pure core, no comfy)."""
import pytest
import torch

from p3s_core import subject_attention
from p3s_core.adapter import AdapterSpec, P3SAdapter, load_adapter, read_adapter_header, save_adapter

LAYERS = [("input.1.0", 32), ("middle.0.0", 64)]


def _spec(**kw):
    return AdapterSpec(family="sd15", rank=4, alpha=4.0, clip_width=48, ctx_dim=40, layers=LAYERS, **kw)


def _nudge(a: P3SAdapter, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in a.named_parameters():
            if name.startswith("xattn.") and name.endswith("to_out.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * std)


def test_the_read_is_attention_over_the_subject_context_per_row_and_scaled_by_the_weight():
    m = subject_attention.SubjectCrossAttention(32, 40, 64)
    assert m.heads == 2 and m.to_out.weight.abs().max().item() == 0  # fresh: adds nothing
    with torch.no_grad():
        m.to_out.weight.normal_(std=0.2)
    n, ctx = torch.randn(3, 10, 32), torch.randn(2, 7, 40)
    rows = torch.tensor([1, -1, 0])
    got = subject_attention.read(m, n, ctx, rows, 0.5)
    # by hand: row 0 reads context 1, row 2 reads context 0, row 1 reads nothing; two 32-wide heads
    for b, r in ((0, 1), (2, 0)):
        q, k, v = m.to_q(n[b]), m.to_k(ctx[r]), m.to_v(ctx[r])
        heads = [torch.softmax(q[:, h * 32:(h + 1) * 32] @ k[:, h * 32:(h + 1) * 32].T / 32 ** 0.5, -1)
                 @ v[:, h * 32:(h + 1) * 32] for h in range(2)]
        want = m.to_out(torch.cat(heads, -1)) * 0.5
        assert (got[b] - want).abs().max().item() <= 1e-5
    assert got[1].abs().max().item() == 0
    assert got[0].abs().max().item() > 1e-3


def test_adapter_subject_attention_round_trips_and_old_headers_stay_as_they_were(tmp_path):
    spec = _spec(subject_attn=16)
    a = P3SAdapter(spec)
    assert a.has_subject_attn("middle.0.0") and not a.has_subject_attn("output.1.0")
    assert sum(p.numel() for p in a.parameters()) == spec.parameter_count()
    assert spec.to_metadata()["subject_attn"] == "16" and "xattn.middle.0.0.to_q.weight" in a.state_dict()
    tokens, valid = torch.randn(2, 9, 48), torch.ones(2, 9, dtype=torch.bool)
    valid[1] = False  # a row without subject tokens: zero context, hence a zero read
    ctx = a.subject_context(tokens, valid)
    assert ctx.shape == (2, 77, 40) and ctx[1].abs().max().item() == 0 and ctx[0].abs().max().item() > 0
    n = torch.randn(2, 5, 64)
    assert a.subject_read("middle.0.0", n, ctx, torch.tensor([0, 1]), 1.0).abs().max().item() == 0  # fresh
    _nudge(a)
    moved = a.subject_read("middle.0.0", n, ctx, torch.tensor([0, 1]), 1.0)
    assert moved[0].abs().max().item() > 1e-3
    save_adapter(a, tmp_path / "x.safetensors")
    assert read_adapter_header(tmp_path / "x.safetensors").subject_attn == 16
    b = load_adapter(tmp_path / "x.safetensors")
    assert torch.allclose(b.subject_read("middle.0.0", n, b.subject_context(tokens, valid), torch.tensor([0, 1]), 1.0),
                          moved, atol=1e-6)
    assert b.subject_read("output.1.0", n, ctx, torch.tensor([0, 1]), 1.0) is None
    with pytest.raises(ValueError, match="subject layer 'middle.0.0' expects width 64, got 32"):
        b.subject_read("middle.0.0", torch.randn(1, 4, 32), ctx, torch.tensor([0]), 1.0)
    old = P3SAdapter(_spec())
    assert "subject_attn" not in old.spec.to_metadata() and not any(k.startswith("xattn") for k in old.state_dict())
    with pytest.raises(ValueError, match="subject_attn must be in 0..1024, found -2"):
        _spec(subject_attn=-2)


def test_the_subject_read_trains():
    a = P3SAdapter(_spec(subject_attn=16))
    _nudge(a, 0.05)
    ctx = a.subject_context(torch.randn(1, 9, 48), torch.ones(1, 9, dtype=torch.bool))
    out = a.subject_read("input.1.0", torch.randn(1, 6, 32), ctx, torch.tensor([0]), 1.0)
    out.square().sum().backward()
    grads = {n: p.grad for n, p in a.named_parameters() if p.grad is not None}
    assert {"xattn.input.1.0.to_q.weight", "xattn.input.1.0.to_k.weight", "xattn.input.1.0.to_v.weight",
            "xattn.input.1.0.to_out.weight", "proj.queries"} <= set(grads)

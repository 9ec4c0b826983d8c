"""Losses: Attention Consistency Loss on hand-computed attention maps, diffusion loss, helpers."""

import pytest
import torch

from p3s_core.losses import (attention_consistency_loss, cross_attention_probs, diffusion_loss,
                             total_loss)


def _maps(seed: int, shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.softmax(torch.randn(*s, generator=g), dim=-1) for s in shapes]


def test_cross_attention_probs_matches_hand_computation():
    torch.manual_seed(0)
    b, heads, d, tq, tk = 2, 3, 4, 5, 7
    q, k = torch.randn(b, tq, heads * d), torch.randn(b, tk, heads * d)
    p = cross_attention_probs(q, k, heads)
    assert p.shape == (b * heads, tq, tk)
    for bi in range(b):
        for h in range(heads):
            qh, kh = q[bi, :, h * d:(h + 1) * d], k[bi, :, h * d:(h + 1) * d]
            ref = torch.softmax(qh @ kh.T / d ** 0.5, dim=-1)
            torch.testing.assert_close(p[bi * heads + h], ref)
    torch.testing.assert_close(p.sum(-1), torch.ones(b * heads, tq))
    with pytest.raises(ValueError, match="P3S"):
        cross_attention_probs(q, k, 5)


def test_acl_zero_when_injection_does_not_change_maps():
    without = _maps(0, [(4, 16, 77), (4, 64, 77)])
    with_ = [m.clone() for m in without]
    assert attention_consistency_loss(with_, without).item() == 0.0


def test_acl_positive_when_maps_change():
    without = _maps(0, [(4, 16, 77), (4, 64, 77)])
    with_ = _maps(1, [(4, 16, 77), (4, 64, 77)])
    assert attention_consistency_loss(with_, without).item() > 0.0


def test_acl_equals_hand_computed_value():
    # Layer 1: 1x1x2 maps; layer 2: 1x2x2 maps (different shapes are allowed).
    w1, wo1 = torch.tensor([[[0.75, 0.25]]]), torch.tensor([[[0.5, 0.5]]])
    w2, wo2 = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]]), torch.tensor([[[0.0, 1.0], [0.5, 0.5]]])
    # layer1: (0.25^2 + 0.25^2)/2 = 0.0625 ; layer2: (1 + 1 + 0 + 0)/4 = 0.5 ; mean = 0.28125
    loss = attention_consistency_loss([w1, w2], [wo1, wo2])
    assert loss.item() == pytest.approx(0.28125, abs=1e-7)


def test_acl_from_probs_of_injected_keys():
    # Maps recorded the way the recorders do it: same q, text k; injection changes q here.
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 8), torch.randn(1, 3, 8)
    base = cross_attention_probs(q, k, 2)
    assert attention_consistency_loss([cross_attention_probs(q, k, 2)], [base]).item() == 0.0
    moved = cross_attention_probs(q + 1.0, k, 2)
    ref = ((moved - base) ** 2).mean()
    torch.testing.assert_close(attention_consistency_loss([moved], [base]), ref)


def test_acl_gradient_stops_at_without_branch():
    logits_with = torch.randn(2, 5, 7, requires_grad=True)
    logits_without = torch.randn(2, 5, 7, requires_grad=True)
    a_with, a_without = torch.softmax(logits_with, -1), torch.softmax(logits_without, -1)
    leaf_without = torch.rand(3, 4, 6, requires_grad=True)
    leaf_with = torch.rand(3, 4, 6, requires_grad=True)
    loss = attention_consistency_loss([a_with, leaf_with], [a_without, leaf_without])
    loss.backward()
    assert logits_with.grad is not None and logits_with.grad.abs().sum() > 0
    assert leaf_with.grad is not None and leaf_with.grad.abs().sum() > 0
    assert logits_without.grad is None
    assert leaf_without.grad is None


def test_acl_rejects_bad_input():
    m = _maps(0, [(2, 4, 5), (2, 8, 5)])
    with pytest.raises(ValueError, match="P3S: .*no attention maps"):
        attention_consistency_loss([], [])
    with pytest.raises(ValueError, match="P3S: .*2 maps with injection but 1 without"):
        attention_consistency_loss(m, m[:1])
    with pytest.raises(ValueError, match="P3S: .*layer 1"):
        attention_consistency_loss(m, [m[0], m[0]])


def test_acl_fp16_maps_computed_in_float32():
    a = torch.full((1, 1, 2), 0.5, dtype=torch.float16)
    b = torch.tensor([[[0.5 + 2 ** -11, 0.5 - 2 ** -11]]], dtype=torch.float16)
    loss = attention_consistency_loss([a], [b])
    assert loss.dtype == torch.float32 and loss.item() > 0


def test_diffusion_loss_plain_and_weighted():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    assert diffusion_loss(pred, target).item() == pytest.approx(2.5)  # (1 + 4) / 2
    # per-sample weights: mean(1 * 1, 0 * 4)
    assert diffusion_loss(pred, target, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)
    # mask: only sample 1, one pixel -> 4
    mask = torch.zeros(2, 1, 2, 2)
    mask[1, 0, 0, 0] = 1
    assert diffusion_loss(pred, target, mask).item() == pytest.approx(4.0)
    assert diffusion_loss(pred, target, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError, match="P3S"):
        diffusion_loss(pred, target[:1])
    with pytest.raises(ValueError, match="P3S"):
        diffusion_loss(pred, target, torch.ones(3))


def test_total_loss():
    d, a = torch.tensor(1.0), torch.tensor(0.5)
    assert total_loss(d, a, 2.0).item() == pytest.approx(2.0)
    assert total_loss(d, None, 2.0).item() == 1.0
    assert total_loss(d, a, 0.0).item() == 1.0
    with pytest.raises(ValueError, match="P3S"):
        total_loss(d, a, -1.0)


def test_loss_weighting_over_noise_levels():
    """eps: plain MSE; v: x (1 + sigma^2) per sample; x0: x sigma^2 (the MSE of the implied clean latent)."""
    from p3s_core.training import ForwardOutput, compute_loss
    from p3s_core.training.loop import noise_weights
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    per = (pred - target).pow(2).flatten(1).mean(1)
    out = ForwardOutput(pred, target, sigma=sigma)
    assert compute_loss(out, 0.0, "eps")[0].item() == pytest.approx(per.mean().item(), rel=1e-6)
    assert compute_loss(out, 0.0, "v")[0].item() == pytest.approx((per * (1 + sigma ** 2)).mean().item(), rel=1e-6)
    assert compute_loss(out, 0.0, "x0")[0].item() == pytest.approx((per * sigma ** 2).mean().item(), rel=1e-6)
    assert noise_weights(None, "eps") is None
    with pytest.raises(ValueError, match="needs the noise level"):
        compute_loss(ForwardOutput(pred, target), 0.0, "v")


def test_train_config_refuses_unknown_modes_and_weightings():
    from p3s_core.training import TrainConfig
    with pytest.raises(ValueError, match="--reference-mode must be one of cached, per_step, got 'fast'"):
        TrainConfig(reference_mode="fast").validate()
    with pytest.raises(ValueError, match="--loss-weighting must be one of eps, v, x0, got 'snr'"):
        TrainConfig(loss_weighting="snr").validate()
    with pytest.raises(ValueError, match="--read-rank must be >= 0"):
        TrainConfig(read_rank=-2).validate()
    TrainConfig(read_rank=0, loss_weighting="x0", reference_mode="per_step").validate()


def test_subject_loss_weight_moves_the_loss_onto_the_subject_and_keeps_its_size():
    """--subject-loss-weight W: each pixel counts 1 + W x its subject mask, scaled to mean 1 per image, so the
    same error counts (1 + W) times more on the subject than beside it, and a uniform error keeps its loss."""
    from p3s_core.losses import subject_pixel_weights
    from p3s_core.training import ForwardOutput, compute_loss
    mask = torch.zeros(2, 4, 4)
    mask[0, :2, :2] = 1.0   # a quarter of image 0 is the subject
    mask[1, :, :1] = 0.5    # image 1: a half-covered column (an edge cell after the area resize)
    w = subject_pixel_weights(mask, 8.0)
    assert w.shape == (2, 1, 4, 4)
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.ones(2))
    assert w[0, 0, 0, 0] / w[0, 0, 3, 3] == pytest.approx(9.0)
    assert w[1, 0, 0, 0] / w[1, 0, 0, 3] == pytest.approx(5.0)
    target = torch.zeros(2, 3, 4, 4)
    sigma = torch.tensor([1.0, 2.0])
    uniform = ForwardOutput(torch.ones(2, 3, 4, 4), target, sigma=sigma, subject=mask)
    plain = compute_loss(uniform, 0.0, "v")[0].item()
    assert compute_loss(uniform, 0.0, "v", subject_weight=8.0)[0].item() == pytest.approx(plain, rel=1e-6)
    on_subject = torch.zeros(2, 3, 4, 4)
    on_subject[0, :, 0, 0] = 1.0
    beside = torch.zeros(2, 3, 4, 4)
    beside[0, :, 3, 3] = 1.0
    l_on = compute_loss(ForwardOutput(on_subject, target, sigma=sigma, subject=mask), 0.0, "v", 8.0)[0].item()
    l_beside = compute_loss(ForwardOutput(beside, target, sigma=sigma, subject=mask), 0.0, "v", 8.0)[0].item()
    assert l_on / l_beside == pytest.approx(9.0, rel=1e-5)
    # W = 0 is the loss as before, bit for bit, with or without a mask
    assert compute_loss(ForwardOutput(on_subject, target, sigma=sigma, subject=mask), 0.0, "v", 0.0)[0].item() == \
        compute_loss(ForwardOutput(on_subject, target, sigma=sigma), 0.0, "v")[0].item()
    with pytest.raises(ValueError, match="--subject-loss-weight needs the subject's mask in every target"):
        compute_loss(ForwardOutput(on_subject, target, sigma=sigma), 0.0, "v", 8.0)
    with pytest.raises(ValueError, match="subject loss weight must be finite and >= 0, got -1"):
        subject_pixel_weights(mask, -1.0)
    with pytest.raises(ValueError, match=r"pixel weights \(2, 1, 2, 2\) do not match the prediction"):
        from p3s_core.losses import diffusion_loss
        diffusion_loss(on_subject, target, pixel_weight=torch.ones(2, 1, 2, 2))
    from p3s_core.training import TrainConfig
    with pytest.raises(ValueError, match=r"--subject-loss-weight must be >= 0 \(0: off\), got -2"):
        TrainConfig(subject_loss_weight=-2.0).validate()

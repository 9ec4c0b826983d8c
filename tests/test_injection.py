"""Multi-layers Condition Injection and the weight schedule in the real host (tiny models, CPU)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import scenes

STEPS = 3


class Ctx:
    pass


@pytest.fixture(scope="module")
def env(host):
    N = host.nodes
    e = Ctx()
    e.host, e.N = host, N
    with torch.inference_mode():
        e.model, e.clip, e.vae = N.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
        e.pos = N.CLIPTextEncode().encode(e.clip, "a photo of a dog on a beach")[0]
        e.neg = N.CLIPTextEncode().encode(e.clip, "blurry")[0]
    e.image, e.masks, e.centers = scenes.two_subjects(64, 64, seed=2)
    e.Apply = N.NODE_CLASS_MAPPINGS["P3SApply"]
    e.Sampler = N.NODE_CLASS_MAPPINGS["P3SSampler"]
    e.patch_mod = host.pack("nodes.patch")
    e.inj = host.pack("p3s_core.injection")
    return e


def sample(e, model, cfg=5.0, batch=1, seed=7, pos=None, neg=None, callback=None):
    latent = {"samples": torch.zeros(batch, 4, 8, 8)}
    with torch.inference_mode():
        return e.N.common_ksampler(model, seed, STEPS, cfg, "euler", "normal", pos or e.pos, neg or e.neg,
                                   latent)[0]["samples"]


def apply(e, model=None, subject=0, weight=1.0, start=0.0, end=1.0, **kw):
    ref = kw.pop("reference", e.image[None])
    mask = kw.pop("mask", e.masks[subject:subject + 1].float())
    with torch.inference_mode():
        return e.Apply.execute(model or e.model, e.vae, ref, weight, start, end, mask=mask, **kw).result


def test_weight_zero_and_closed_window_equal_plain_ksampler(env):
    plain = sample(env, env.model)
    for kw in ({"weight": 0.0}, {"start": 0.5, "end": 0.5}, {"start": 1.0, "end": 1.0}):
        patched = apply(env, **kw)[0]
        assert (sample(env, patched) - plain).abs().max().item() <= 1e-6, kw
    assert (sample(env, apply(env)[0]) - plain).abs().max().item() > 1e-3  # and injection does something


def _instrument(env, monkeypatch):
    """Record every biased attention call (the read of the reference tokens) with its inputs."""
    calls = []
    orig = env.inj.biased_attention

    def spy(q, k, v, heads, offset, bias):
        calls.append({"q": q.shape[1], "k": k.clone(), "offset": offset, "bias": bias.clone()})
        return orig(q, k, v, heads, offset, bias)
    monkeypatch.setattr(env.inj, "biased_attention", spy)
    return calls


def _capture_patch(store):
    """A foreign attn1 patch that records the self-attention inputs it sees, by mode and block."""
    def patch(n, ctx, val, extra):
        mode = next(iter(extra.get("p3s", {}).values()), "plain")
        key = f"{extra['block'][0]}.{extra['block'][1]}.{extra['block_index']}"
        store.setdefault(mode, {}).setdefault(key, []).append((n.clone(), ctx.clone(), extra["original_shape"]))
        return n, ctx, val
    return patch


def test_only_subject_tokens_are_appended_and_attended(env, monkeypatch):
    calls = _instrument(env, monkeypatch)
    seen = {}
    patched = apply(env, subject=0, reference_mode="cached")[0].clone()
    patched.set_model_attn1_patch(_capture_patch(seen))  # registered after P3S: sees the extended context
    sample(env, patched)
    assert calls and seen.get("write") and seen.get("read")
    mask = env.masks[0].float()
    for key, writes in seen["write"].items():
        ref_n, _, shape = writes[-1]  # reference hidden states [1, T, C]
        h, w = env.inj.layer_grid(ref_n.shape[1], shape[-2], shape[-1])
        cover = F.adaptive_avg_pool2d(F.interpolate(mask[None, None], size=(shape[-2], shape[-1]), mode="area"),
                                      (h, w)).flatten()
        for n, ctx, _ in seen["read"][key]:
            appended = ctx[:, n.shape[1]:]
            assert appended.shape[1] > 0
            for row in appended[0]:
                d = (ref_n[0] - row).abs().amax(dim=1)
                j = int(d.argmin())
                assert d[j] < 1e-5, "an appended token is not a reference token"
                assert cover[j] > 0, f"{key}: token {j} outside the subject mask was appended"
            assert appended.shape[1] <= int((cover > 0).sum())
    # attention weights: padding / disabled tokens get exactly zero probability
    for c in calls:
        assert torch.isfinite(c["bias"]).any()
        assert c["offset"] + c["bias"].shape[1] == c["k"].shape[1]


def test_moving_the_mask_to_the_other_subject_changes_the_output(env):
    a = sample(env, apply(env, subject=0)[0])
    b = sample(env, apply(env, subject=1)[0])
    assert (a - b).abs().max().item() > 1e-3


@pytest.mark.parametrize("preset,low,high,start,end", [("ramp_up", 0.2, 1.0, 0.0, 1.0),
                                                        ("cosine", 0.0, 1.5, 0.1, 0.9),
                                                        ("step", 0.3, 1.0, 0.0, 1.0)])
def test_applied_weight_follows_the_schedule(env, monkeypatch, preset, low, high, start, end):
    from p3s_core.schedule import WeightSchedule  # the core, imported independently of the pack
    calls = _instrument(env, monkeypatch)
    sigmas = []

    def sigma_probe(n, ctx, val, extra):
        if "read" in extra.get("p3s", {}).values():
            sigmas.append(float(extra["sigmas"][0]))
        return n, ctx, val
    patched = apply(env, weight=0.8, start=start, end=end)[0].clone()
    patched.set_model_attn1_patch(sigma_probe)
    with torch.inference_mode():
        env.Sampler.execute(patched, 7, 6, 5.0, "euler", "normal", env.pos, env.neg,
                            {"samples": torch.zeros(1, 4, 8, 8)}, 1.0, preset, low, high)
    ms = env.model.get_model_object("model_sampling")
    all_sigmas = env.N.comfy.samplers.calculate_sigmas(ms, "normal", 6)[:-1].tolist()
    expect = WeightSchedule(preset, 0.8 * low, 0.8 * high, start, end)
    applied = {}
    for c, s in zip(calls, sigmas):
        finite = c["bias"][torch.isfinite(c["bias"])]
        applied.setdefault(round(s, 5), set()).add(float(finite.exp().mean()))
    checked = 0
    for s in all_sigmas:
        progress = 1.0 - float(ms.timestep(torch.tensor([s]))[0]) / 999.0
        in_window = float(ms.percent_to_sigma(end)) <= s <= float(ms.percent_to_sigma(start))
        want = expect.weight(min(max(progress, start), end)) if in_window else 0.0
        got = applied.get(round(s, 5))
        if want <= 0:
            assert got is None, f"injected at sigma {s} where the schedule is 0"
        else:
            assert got is not None and max(got) - min(got) < 1e-6, (s, got)
            assert math.isclose(next(iter(got)), want, rel_tol=1e-4), (s, progress, got, want)
            checked += 1
    assert checked >= 2

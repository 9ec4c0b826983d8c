"""Multi-layers Condition Injection and the weight schedule in the real host (tiny models, CPU)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import graphs

STEPS = 3


@pytest.fixture(scope="module")
def env(host):
    e = graphs.injection_env(host)
    e.attention_mod = host.pack("nodes.attention")
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
    """Record every read of the reference tokens with its inputs, as (offset, bias) of the keys."""
    calls = []
    orig = env.inj.subject_read

    def spy(q, k, v, heads, parts):
        offset, bias = env.inj.merged_bias(parts, k.shape[1])
        calls.append({"q": q.shape[1], "k": k.clone(), "offset": offset, "bias": bias.clone()})
        return orig(q, k, v, heads, parts)
    monkeypatch.setattr(env.inj, "subject_read", spy)
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


def _counting(counter, name, replace=False):
    if replace:
        def attn2_replace(q, k, v, extra):
            counter[name] = counter.get(name, 0) + 1
            from comfy.ldm.modules.attention import optimized_attention
            return optimized_attention(q, k, v, extra["n_heads"])
        return attn2_replace

    def attn1_patch(n, ctx, val, extra):
        counter[name] = counter.get(name, 0) + 1
        return n, ctx, val
    return attn1_patch


def _with_foreign(model, counter, tag):
    m = model.clone()
    m.set_model_attn1_patch(_counting(counter, f"attn1_{tag}"))
    # an attn2 replace is one slot per block: the two packs use different blocks, as real packs do
    blocks = (("input", 1), ("middle", 0)) if tag == "before" else (("input", 3), ("output", 1))
    for block in blocks:
        m.set_model_attn2_replace(_counting(counter, f"attn2_{tag}", replace=True), block[0], block[1])
    return m


def test_p3s_composes_with_foreign_patches_before_and_after(env):
    counter = {}
    before = _with_foreign(env.model, counter, "before")
    patched = apply(env, model=before)[0]
    after = _with_foreign(patched, counter, "after")
    out = sample(env, after)
    for name in ("attn1_before", "attn2_before", "attn1_after", "attn2_after"):
        assert counter.get(name, 0) > 0, f"{name} never ran: {counter}"
    # P3S still injects with the foreign patches present
    counter_plain = {}
    plain = sample(env, _with_foreign(_with_foreign(env.model, counter_plain, "before"), counter_plain, "after"))
    assert (out - plain).abs().max().item() > 1e-3


def test_input_model_is_never_modified_and_two_applies_do_not_interfere(env):
    plain = sample(env, env.model)
    options_before = repr(env.model.model_options)
    wrappers_before = repr(env.model.wrappers)
    a_model = apply(env, subject=0)[0]
    b_model = apply(env, subject=1, reference=env.image.flip(1)[None], mask=env.masks[1:].float().flip(-1))[0]
    assert repr(env.model.model_options) == options_before and repr(env.model.wrappers) == wrappers_before
    assert (sample(env, env.model) - plain).abs().max().item() == 0
    a1 = sample(env, a_model)
    b1 = sample(env, b_model)
    a2 = sample(env, a_model)
    assert (a1 - a2).abs().max().item() <= 1e-6  # b's run left nothing behind in a
    assert (a1 - b1).abs().max().item() > 1e-3
    # chained: two subjects on one MODEL both inject
    chained = apply(env, model=a_model, subject=1)[0]
    c = sample(env, chained)
    assert (c - a1).abs().max().item() > 1e-3


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("how", ["normal", "exception", "interrupt"])
def test_bank_is_freed_after_sampling_errors_and_interrupts(env, how):
    import comfy.model_management as mm
    patched = apply(env, reference_mode="cached")[0].clone()
    (patch_obj,) = env.patch_mod.find_patches(patched)
    seen = {"calls": 0, "bank": 0, "runs": [], "segments": []}

    def probe(n, ctx, val, extra):
        if "read" in extra.get("p3s", {}).values():
            seen["calls"] += 1
            run = extra[env.patch_mod.RUNS_KEY][patch_obj.id]  # this sampling's state
            seen["runs"].append(run)
            seen["segments"].append(extra[env.attention_mod.SEGMENTS_KEY])
            seen["bank"] = max(seen["bank"], len(run.bank))
            if seen["calls"] == 6:
                if how == "exception":
                    raise _Boom("foreign patch failed")
                if how == "interrupt":
                    mm.interrupt_current_processing(True)
                    mm.throw_exception_if_processing_interrupted()
        return n, ctx, val
    patched.set_model_attn1_patch(probe)
    if how == "normal":
        sample(env, patched)
    else:
        with pytest.raises(_Boom if how == "exception" else mm.InterruptProcessingException):
            sample(env, patched)
    mm.interrupt_current_processing(False)
    assert seen["bank"] > 0  # the bank was filled while sampling
    assert all(len(run.bank) == 0 and run.bank.nbytes() == 0 for run in seen["runs"])
    assert all(len(segments) == 0 for segments in seen["segments"])  # no appended tokens left pending


def test_cfg_batch_broadcast_and_uncond_option(env):
    for cfg in (1.0, 5.0):
        plain = sample(env, env.model, cfg=cfg, batch=2)
        out = sample(env, apply(env)[0], cfg=cfg, batch=2)
        assert out.shape[0] == 2
        for row in range(2):  # a reference batch of 1 reaches every latent of the batch
            assert (out[row] - plain[row]).abs().max().item() > 1e-3, (cfg, row)
    off = sample(env, apply(env, uncond_sees_reference=False)[0], cfg=5.0)
    on = sample(env, apply(env, uncond_sees_reference=True)[0], cfg=5.0)
    assert (off - on).abs().max().item() > 1e-3
    # at cfg 1 there is no unconditional pass, so the option cannot matter
    off1 = sample(env, apply(env, uncond_sees_reference=False)[0], cfg=1.0)
    on1 = sample(env, apply(env, uncond_sees_reference=True)[0], cfg=1.0)
    assert (off1 - on1).abs().max().item() <= 1e-6


def test_per_latent_references_and_batch_mismatch(env):
    refs = torch.stack([env.image, env.image.flip(1)])
    masks = torch.stack([env.masks[0], env.masks[0].flip(-1)]).float()
    out = sample(env, apply(env, reference=refs, mask=masks)[0], batch=2)
    assert out.shape[0] == 2
    bad = apply(env, reference=refs, mask=masks)[0]
    with pytest.raises(ValueError, match="P3S: the reference batch has 2 images but the latent batch has 3"):
        sample(env, bad, batch=3)


def test_sdxl_shaped_model_runs(env):
    tiny = env.host.tiny
    model = tiny.make_sdxl_patcher()
    pos, neg = tiny.text_cond(pooled=True, seed=1), tiny.text_cond(pooled=True, seed=2)
    plain = sample(env, model, pos=pos, neg=neg)
    patched = apply(env, model=model)[0]
    out = sample(env, patched, pos=pos, neg=neg)
    assert (out - plain).abs().max().item() > 1e-3
    zero = apply(env, model=model, weight=0.0)[0]
    assert (sample(env, zero, pos=pos, neg=neg) - plain).abs().max().item() <= 1e-6
    layers = env.host.pack("nodes.models").transformer_layers(model)
    assert any(k.endswith(".1") for k, _ in layers)  # depth-2 blocks are keyed per transformer block


@pytest.mark.parametrize("case", ["empty_mask", "no_vae", "unsupported", "no_points", "bad_mode"])
def test_bad_input_is_refused_clearly_and_model_left_unpatched(env, case):
    model = env.host.tiny.make_unsupported_patcher() if case == "unsupported" else env.model
    before = (repr(model.model_options), repr(model.wrappers))
    kw = {}
    if case == "empty_mask":
        kw["mask"] = torch.zeros(1, 64, 64)
    if case == "no_points":
        kw["mask"] = None
    if case == "bad_mode":
        kw["reference_mode"] = "sometimes"
    messages = {"empty_mask": "P3S: mask: mask 0 is empty", "no_vae": "P3S: vae: no VAE is connected",
                "unsupported": "P3S: model: the MODEL is TinySD20.*SD1.5 and SDXL",
                "no_points": "P3S: points: connect P3S_POINTS", "bad_mode": "P3S: reference_mode='sometimes'"}
    with pytest.raises(ValueError, match=messages[case]):
        with torch.inference_mode():
            if case == "no_vae":
                env.Apply.execute(model, None, env.image[None], 1.0, 0.0, 1.0, mask=env.masks[:1].float())
            else:
                kw.setdefault("mask", env.masks[:1].float())
                env.Apply.execute(model, env.vae, env.image[None], 1.0, 0.0, 1.0, **kw)
    assert (repr(model.model_options), repr(model.wrappers)) == before


def test_sampler_refuses_unpatched_model(env):
    with pytest.raises(ValueError, match="P3S: model: this MODEL has no P3S patch"):
        env.Sampler.execute(env.model, 1, 2, 5.0, "euler", "normal", env.pos, env.neg,
                            {"samples": torch.zeros(1, 4, 8, 8)}, 1.0, "constant", 1.0, 1.0)


@pytest.mark.parametrize("fill", ["blur", "flat", "inpaint"])
def test_subject_only_reference_fills(env, fill):
    _, mask, subject = apply(env, fill=fill)
    inside = env.masks[0]
    assert subject.shape == (1, 64, 64, 3) and mask.shape == (1, 64, 64)
    assert torch.equal(mask[0] > 0.5, inside)
    # the subject's own pixels are kept exactly; everything outside is replaced
    assert (subject[0][inside] - env.image[inside]).abs().max().item() <= 1e-6
    assert (subject[0][~inside] - env.image[~inside]).abs().mean().item() > 0.02
    if fill == "inpaint":  # regenerated by the MODEL: not the blur it starts from
        blurred = apply(env, fill="blur")[2]
        assert (subject[0][~inside] - blurred[0][~inside]).abs().mean().item() > 0.01


def test_sdxl_checkpoint_through_comfyui_loader(env):
    """The tiny SDXL family loads through CheckpointLoaderSimple; P3S (inpaint fill too) runs on it."""
    N = env.N
    model, clip, vae, pos, neg = graphs.load_encoded(N, "tiny_sdxl.safetensors", "a dog on a beach")
    assert env.host.pack("nodes.models").model_family(model) == "sdxl"
    plain = sample(env, model, pos=pos, neg=neg)
    with torch.inference_mode():
        patched, _, subject = env.Apply.execute(model, vae, env.image[None], 1.0, 0.0, 1.0, fill="inpaint",
                                                mask=env.masks[:1].float()).result
    assert (sample(env, patched, pos=pos, neg=neg) - plain).abs().max().item() > 1e-3
    assert (subject[0][env.masks[0]] - env.image[env.masks[0]]).abs().max().item() <= 1e-6

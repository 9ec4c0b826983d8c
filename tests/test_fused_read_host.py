"""The fused subject read equals the masked (biased) read inside the real host, on the real inputs.

tests/core/test_fused_read.py checks the algebra on synthetic tensors; here every attention call that reads
appended reference tokens during a real sampling (tiny SD1.5/SDXL checkpoints through ComfyUI's loader, P3S
Apply, cfg batches, uncond rows that do not read, two references, two chained P3S nodes) is computed both
ways on the same q/k/v, and whole samplings with the fused path and with it turned off agree.
"""
from __future__ import annotations

import pytest
import torch

import scenes

STEPS = 3
CALL_TOL = 1e-4    # one attention call, fused vs masked
SAMPLE_RTOL = 2e-5  # a whole sampling, relative to the output's scale: per-call float32 differences pass
                    # through STEPS steps of the U-Net (latents of the tiny models reach ~200, so an absolute
                    # 1e-3 sat at the edge and failed on a different CPU by 5e-5)


@pytest.fixture(scope="module")
def env(host):
    N = host.nodes
    with torch.inference_mode():
        model, clip, vae = N.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
        xl, xl_clip, xl_vae = N.CheckpointLoaderSimple().load_checkpoint("tiny_sdxl.safetensors")[:3]
        conds = {name: (N.CLIPTextEncode().encode(c, "a photo of a dog on a beach")[0],
                        N.CLIPTextEncode().encode(c, "blurry")[0]) for name, c in (("sd15", clip), ("sdxl", xl_clip))}
    image, masks, _ = scenes.two_subjects(64, 64, seed=2)
    return {"N": N, "models": {"sd15": (model, vae), "sdxl": (xl, xl_vae)}, "conds": conds, "image": image,
            "masks": masks, "Apply": N.NODE_CLASS_MAPPINGS["P3SApply"], "inj": host.pack("p3s_core.injection")}


def _apply(env, model, vae, subject=0, weight=0.7, reference=None, mask=None, **kw):
    reference = env["image"][None] if reference is None else reference
    mask = env["masks"][subject:subject + 1].float() if mask is None else mask
    with torch.inference_mode():
        return env["Apply"].execute(model, vae, reference, weight, 0.0, 1.0, mask=mask, **kw).result[0]


def _sample(env, family, model, cfg=5.0, batch=1):
    pos, neg = env["conds"][family]
    with torch.inference_mode():
        return env["N"].common_ksampler(model, 11, STEPS, cfg, "euler", "normal", pos, neg,
                                        {"samples": torch.zeros(batch, 4, 8, 8)})[0]["samples"]


def _compare_every_read(env, monkeypatch):
    """Wrap ``subject_read``: each call also computes the masked read on the same inputs and records the gap."""
    inj, seen = env["inj"], []
    read = inj.subject_read

    def both(q, k, v, heads, parts):
        fused = inj.fused_subject_read(q, k, v, heads, parts)
        offset, bias = inj.merged_bias(parts, k.shape[1])
        masked = inj.biased_attention(q, k, v, heads, offset, bias)
        gap = None if fused is None else (fused.float() - masked.float()).abs().max().item()
        seen.append({"gap": gap, "rows": torch.cat([p.rows for p in parts]).tolist(), "parts": len(parts),
                     "weights": [p.weight for p in parts], "q": tuple(q.shape)})
        return read(q, k, v, heads, parts)
    monkeypatch.setattr(inj, "subject_read", both)
    return seen


def _masked_only(env, monkeypatch):
    """Turn the fused path off: every read takes the masked ``biased_attention`` (the fallback)."""
    monkeypatch.setattr(env["inj"], "fused_subject_read", lambda *a, **k: None)


PER_STEP = {"reference_mode": "per_step"}  # a fresh reference pass at every step: the most reads compared
SETUPS = {  # family, cfg, batch, apply kwargs; "chain": a second P3S Apply on the other subject
    "sd15_cfg_uncond_off": ("sd15", 5.0, 1, {**PER_STEP}),
    "sd15_cfg_uncond_on": ("sd15", 5.0, 2, {**PER_STEP, "uncond_sees_reference": True, "weight": 1.3}),
    "sd15_cfg1_cached": ("sd15", 1.0, 1, {"reference_mode": "cached", "weight": 1.0}),
    "sd15_cfg_default_mode": ("sd15", 5.0, 1, {}),
    "sd15_two_references": ("sd15", 5.0, 2, {**PER_STEP, "two_refs": True}),
    "sd15_two_p3s_nodes": ("sd15", 5.0, 1, {**PER_STEP, "chain": True}),
    "sdxl_cfg": ("sdxl", 4.0, 1, {**PER_STEP, "weight": 0.4}),
}


def _patched(env, family, kw):
    kw = dict(kw)
    model, vae = env["models"][family]
    if kw.pop("two_refs", False):
        kw["reference"] = torch.stack([env["image"], env["image"].flip(1)])
        kw["mask"] = torch.stack([env["masks"][0], env["masks"][0].flip(-1)]).float()
    chain = kw.pop("chain", False)
    patched = _apply(env, model, vae, **kw)
    return _apply(env, patched, vae, subject=1, weight=1.6) if chain else patched


@pytest.mark.parametrize("setup", list(SETUPS))
def test_every_fused_read_equals_the_masked_read_and_so_does_the_sampling(env, monkeypatch, setup):
    family, cfg, batch, kw = SETUPS[setup]
    patched = _patched(env, family, kw)
    with monkeypatch.context() as m:
        seen = _compare_every_read(env, m)
        fused_out = _sample(env, family, patched, cfg, batch)
    assert seen, "no attention call read the reference tokens"
    assert all(s["gap"] is not None for s in seen), [s["q"] for s in seen if s["gap"] is None]
    worst = max(s["gap"] for s in seen)
    assert worst <= CALL_TOL, f"{setup}: fused vs masked read differ by {worst:.2e}"
    if cfg > 1 and not kw.get("uncond_sees_reference"):
        assert any(r < 0 for s in seen for r in s["rows"])  # uncond rows were in the calls, not reading
    if kw.get("chain"):
        assert any(s["parts"] == 2 for s in seen)  # both nodes' tokens in one call, each with its weight
    with monkeypatch.context() as m:
        _masked_only(env, m)
        masked_out = _sample(env, family, patched, cfg, batch)
    plain = _sample(env, family, env["models"][family][0], cfg, batch)
    tol = SAMPLE_RTOL * masked_out.abs().max().item()
    gap = (fused_out - masked_out).abs().max().item()
    assert gap <= tol, f"{setup}: fused vs masked sampling differ by {gap:.2e} (tolerance {tol:.2e})"
    change = (fused_out - plain).abs().max().item()
    assert change > 100 * tol, f"{setup}: the read changed the image by only {change:.2e}"


def test_weight_zero_stays_exactly_plain_with_the_fused_path(env, monkeypatch):
    model, vae = env["models"]["sd15"]
    with monkeypatch.context() as m:
        seen = _compare_every_read(env, m)
        out = _sample(env, "sd15", _apply(env, model, vae, weight=0.0))
    assert not seen  # weight 0: no reference pass, no appended tokens, ComfyUI's own attention
    assert torch.equal(out, _sample(env, "sd15", model))

"""The reference pass runs on the subject's crop at (at most) the generation's scale (real host, tiny models)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import graphs
import scenes


@pytest.fixture(scope="module")
def env(host):
    N = host.nodes
    model, clip, vae, pos, neg = graphs.load_encoded(N, "tiny_sd15.safetensors", "a dog")
    image, masks, _ = scenes.two_subjects(320, 240, seed=4)
    return {"N": N, "model": model, "vae": vae, "pos": pos, "neg": neg, "image": image, "masks": masks,
            "Apply": N.NODE_CLASS_MAPPINGS["P3SApply"], "patch": host.pack("nodes.patch"),
            "scale": host.pack("p3s_core.reference_scale"), "inj": host.pack("p3s_core.injection")}


def _record_passes(model):
    """A foreign attn1 patch registered after P3S: the inputs of every write and read by block."""
    seen = {"write": {}, "read": {}}

    def probe(n, ctx, val, extra):
        mode = next(iter(extra.get("p3s", {}).values()), None)
        if mode:
            key = f"{extra['block'][0]}.{extra['block'][1]}.{extra['block_index']}"
            seen[mode].setdefault(key, []).append((n.clone(), ctx.clone(), tuple(extra["original_shape"])))
        return n, ctx, val
    m = model.clone()
    m.set_model_attn1_patch(probe)
    return m, seen


@pytest.mark.parametrize("side", [8, 16, 32])
def test_reference_pass_uses_the_subject_crop_at_the_generation_scale(env, side):
    subject = env["masks"][0]
    with torch.inference_mode():
        patched = env["Apply"].execute(env["model"], env["vae"], env["image"][None], 1.0, 0.0, 1.0,
                                       mask=subject[None].float(), reference_mode="cached").result[0]
    (patch,) = env["patch"].find_patches(patched)
    levels = patch.levels
    top, left, bottom, right = env["scale"].subject_box(subject[None].float())
    assert levels.latents[0].shape[-2:] == ((bottom - top) // 8, (right - left) // 8)
    assert (bottom - top) * (right - left) < 0.6 * 320 * 240  # the crop, not the photo
    assert len(levels.latents) > 1 and levels.full_cells == 40 * 30

    model, seen = _record_passes(patched)
    with torch.inference_mode():
        env["N"].common_ksampler(model, 3, 2, 5.0, "euler", "normal", env["pos"], env["neg"],
                                 {"samples": torch.zeros(1, 4, side, side)})
    shapes = {s for writes in seen["write"].values() for *_, s in writes}
    assert len(shapes) == 1
    (ref_shape,) = shapes
    i = levels.pick(side, side)
    assert ref_shape[-2:] == tuple(levels.latents[i].shape[-2:])
    # the reference pass never has more latent cells than the generation (unless even the smallest level does)
    assert ref_shape[-2] * ref_shape[-1] <= max(side * side, levels.latents[-1].shape[-2] * levels.latents[-1].shape[-1])
    # what is appended is the level's subject tokens, nothing outside the subject
    mask = levels.masks[i][0]
    for key, writes in seen["write"].items():
        ref_n, _, shape = writes[-1]
        h, w = env["inj"].layer_grid(ref_n.shape[1], shape[-2], shape[-1])
        cover = F.adaptive_avg_pool2d(mask[None, None], (h, w)).flatten()
        for n, ctx, _ in seen["read"][key]:
            appended = ctx[0, n.shape[1]:]
            assert 0 < appended.shape[0] <= int((cover > 0).sum())
            for row in appended:
                j = int((ref_n[0] - row).abs().amax(dim=1).argmin())
                assert cover[j] > 0, f"{key}: appended token {j} lies outside the subject"


def test_a_larger_photo_of_the_same_subject_costs_no_more(env):
    """The same subject on a canvas twice as wide and high: the same crop, and never a larger reference pass."""
    image, mask = env["image"], env["masks"][0].float()
    big = torch.zeros(480, 640, 3)
    big[:240, :320] = image
    big_mask = torch.zeros(480, 640)
    big_mask[:240, :320] = mask
    with torch.inference_mode():
        small_p = env["Apply"].execute(env["model"], env["vae"], image[None], 1.0, 0.0, 1.0, mask=mask[None]).result[0]
        big_p = env["Apply"].execute(env["model"], env["vae"], big[None], 1.0, 0.0, 1.0, mask=big_mask[None]).result[0]
    (a,), (b,) = env["patch"].find_patches(small_p), env["patch"].find_patches(big_p)
    assert a.levels.latents[0].shape == b.levels.latents[0].shape
    assert b.levels.full_cells == 4 * a.levels.full_cells
    # a 4x larger photo: for the same generation its reference pass drops to a smaller level
    assert b.levels.scales[b.levels.pick(32, 32)] < a.levels.scales[a.levels.pick(32, 32)]

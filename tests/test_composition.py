"""P3S with the guidance and speed-up patches of ComfyUI itself: Self-Attention Guidance, Perturbed-Attention
Guidance (attn1 *replaces* on the middle block) and ToMe (merges the queries in an attn1 patch), each before
and after P3S Apply, through the real server; and, in-process, what those patches see.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import graphs
import scenes

SIDE = 64
OTHERS = {"SelfAttentionGuidance": {"scale": 0.5, "blur_sigma": 2.0},
          "PerturbedAttentionGuidance": {"scale": 3.0},
          "TomePatchModel": {"ratio": 0.5}}


def _graph(chain: list[tuple[str, dict]], points: str, tag: str) -> dict:
    """checkpoint -> the MODEL chain (``("p3s", {"weight": w})`` or a node class with inputs) -> KSampler -> latent."""
    p = graphs.prompt_head("tiny_sd15.safetensors", "p3s_compose_ref.png", points, SIDE)
    model = ["ckpt", 0]
    for i, (kind, inputs) in enumerate(chain):
        if kind == "p3s":
            node = {"class_type": "P3SApply", "inputs": {"model": model, "vae": ["ckpt", 2], "reference": ["ref", 0],
                                                         "points": ["pick", 0], "start_percent": 0.0,
                                                         "end_percent": 1.0, **inputs}}
        else:
            node = {"class_type": kind, "inputs": {"model": model, **inputs}}
        p[f"m{i}"] = node
        model = [f"m{i}", 0]
    p["sample"] = {"class_type": "KSampler", "inputs": {"model": model, "positive": ["pos", 0], "negative": ["neg", 0],
                                                       "latent_image": ["empty", 0], "seed": 5, "steps": 3,
                                                       "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                                                       "denoise": 1.0}}
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0],
                                                        "filename_prefix": f"compose/{tag}"}}
    return p


@pytest.fixture(scope="module")
def run_chain(server):
    image, _, centers = scenes.two_subjects(SIDE, SIDE, seed=4)
    scenes.save_png(image, server.base / "input" / "p3s_compose_ref.png")
    points = json.dumps({"width": SIDE, "height": SIDE,
                         "positive": [{"x": centers[0][0], "y": centers[0][1]}], "negative": []})
    done = {}

    def run(*chain):
        key = json.dumps(chain, sort_keys=True)
        if key not in done:
            entry = server.run(_graph(list(chain), points, f"c{len(done)}"))
            saved = entry["outputs"]["save"]["latents"][0]
            done[key] = load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]
        return done[key]
    return run


@pytest.mark.server
@pytest.mark.parametrize("other", sorted(OTHERS))
def test_p3s_composes_with_the_other_node_in_both_orders(run_chain, other):
    node = (other, OTHERS[other])
    alone, p3s = run_chain(node), run_chain(("p3s", {"weight": 1.0}))
    orders = ([node, ("p3s", {"weight": 1.0})], [("p3s", {"weight": 1.0}), node])
    for chain in orders:
        both = run_chain(*chain)
        assert torch.isfinite(both).all()
        assert (both - alone).abs().max().item() > 1e-2, f"{chain}: P3S had no effect next to {other}"
        assert (both - p3s).abs().max().item() > 1e-2, f"{chain}: {other} had no effect next to P3S"
    # README Compatibility: the order of the two nodes does not matter
    assert (run_chain(*orders[0]) - run_chain(*orders[1])).abs().max().item() < 1e-4, other
    for chain in ([node, ("p3s", {"weight": 0.0})], [("p3s", {"weight": 0.0}), node]):
        assert torch.equal(run_chain(*chain), alone), f"{chain}: P3S at weight 0 is not {other} alone"


# ---- in-process: what the other patches see ------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(host):
    N = host.nodes
    model, clip, vae, pos, neg = graphs.load_encoded(N, "tiny_sd15.safetensors", "a dog on a beach")
    image, masks, _ = scenes.two_subjects(SIDE, SIDE, seed=2)
    return {"N": N, "model": model, "vae": vae, "pos": pos, "neg": neg, "image": image, "masks": masks}


def _p3s(env, model, weight=1.0):
    Apply = env["N"].NODE_CLASS_MAPPINGS["P3SApply"]
    with torch.inference_mode():
        return Apply.execute(model, env["vae"], env["image"][None], weight, 0.0, 1.0,
                             mask=env["masks"][:1].float()).result[0]


def _sample(env, model):
    with torch.inference_mode():
        return env["N"].common_ksampler(model, 7, 3, 5.0, "euler", "normal", env["pos"], env["neg"],
                                        {"samples": torch.zeros(1, 4, SIDE // 8, SIDE // 8)})[0]["samples"]


def _other(env, name, model):
    return env["N"].NODE_CLASS_MAPPINGS[name].execute(model, **OTHERS[name]).result[0]


def test_sag_records_the_attention_map_of_the_image_tokens_only(env, monkeypatch):
    import sys
    sag = sys.modules[env["N"].NODE_CLASS_MAPPINGS["SelfAttentionGuidance"].__module__]  # the module ComfyUI loaded
    maps = []
    real = sag.create_blur_map

    def spy(x0, attn, *args, **kwargs):
        maps.append(tuple(attn.shape))
        return real(x0, attn, *args, **kwargs)
    monkeypatch.setattr(sag, "create_blur_map", spy)
    for model in (_p3s(env, _other(env, "SelfAttentionGuidance", env["model"])),
                  _other(env, "SelfAttentionGuidance", _p3s(env, env["model"]))):
        maps.clear()
        _sample(env, model)
        middle = (SIDE // 8 // 2) ** 2  # the tiny U-Net's middle block: a 4x4 grid
        assert maps and all(m[-2:] == (middle, middle) for m in maps), maps


def test_a_plain_attention_replace_keeps_the_p3s_read_exact(env):
    """A replace that computes plain attention, on any block, in either order: the merge gives P3S alone."""
    from comfy.ldm.modules.attention import optimized_attention
    seen = []

    def replace(q, k, v, extra):
        seen.append((q.shape[1], k.shape[1]))
        return optimized_attention(q, k, v, extra["n_heads"])
    p3s = _sample(env, _p3s(env, env["model"]))
    for block in (("middle", 0, 0), ("input", 1, 0), ("output", 3, 0)):
        after = _p3s(env, env["model"]).clone()
        after.set_model_attn1_replace(replace, *block)
        before = env["model"].clone()
        before.set_model_attn1_replace(replace, *block)
        for model in (after, _p3s(env, before)):
            seen.clear()
            out = _sample(env, model)
            assert seen and all(q == k for q, k in seen), "the replace saw appended tokens"
            # float32 noise through 3 steps at cfg 5 (latents of magnitude ~50)
            assert (out - p3s).abs().max().item() < 5e-3, block


def test_tome_gives_the_same_image_before_and_after_p3s(env):
    torch.manual_seed(0)
    before = _sample(env, _p3s(env, _other(env, "TomePatchModel", env["model"])))
    after = _sample(env, _other(env, "TomePatchModel", _p3s(env, env["model"])))
    assert (before - after).abs().max().item() < 5e-3

"""Adapter mode end to end in the real host: P3S Load Adapter, P3S Apply with an adapter, training with the
Attention Consistency Loss (scripts/train_adapter.py -> nodes/train/ + p3s_core.training), paired references,
resume, and refusals (tiny models, CPU).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import scenes

REPO = Path(__file__).resolve().parents[1]
SIDE = 64
STEPS = 50


def _load_script():
    spec = importlib.util.spec_from_file_location("p3s_train_adapter", REPO / "scripts" / "train_adapter.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_dataset(root: Path, seeds, with_points: bool = True) -> Path:
    from PIL import Image
    for sub in ("images", "captions", "masks", "points"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(seeds):
        image, masks, centers = scenes.two_subjects(SIDE, SIDE, seed=seed)
        stem = f"scene{seed}"
        scenes.save_png(image, root / "images" / f"{stem}.png")
        (root / "captions" / f"{stem}.txt").write_text("a dog on the grass\n")
        subject = n % 2
        if with_points and n == 0:  # one sample clicked by a user: points file instead of a mask
            cx, cy = centers[subject]
            (root / "points" / f"{stem}.json").write_text(json.dumps(
                {"width": SIDE, "height": SIDE, "positive": [{"x": cx, "y": cy}], "negative": []}))
        else:
            Image.fromarray((masks[subject].numpy() * 255).astype(np.uint8)).save(root / "masks" / f"{stem}.png")
    return root


class Env:
    pass


@pytest.fixture(scope="module")
def env(host, tmp_path_factory):
    e = Env()
    e.host, e.N = host, host.nodes
    e.ta = _load_script()
    e.train = host.pack("nodes.train")
    e.training = host.pack("p3s_core.training")
    e.adapter_mod = host.pack("p3s_core.adapter")
    e.tmp = tmp_path_factory.mktemp("adapter_mode")
    e.data = _write_dataset(e.tmp / "data", range(6))
    e.heldout = _write_dataset(e.tmp / "heldout", (20, 21, 22), with_points=False)
    e.ckpt = host.base / "models" / "checkpoints" / "tiny_sd15.safetensors"
    e.cv_path = host.base / "models" / "clip_vision" / "tiny_clip_vision.safetensors"
    model, clip, vae, cv = e.train.load_models(str(e.ckpt), str(e.cv_path))  # outside inference_mode: trainable
    e.backend = e.train.ComfyBackend(model, clip, vae, cv, resolution=SIDE, selection_features="builtin")
    e.dataset = e.training.SubjectDataset(e.data, SIDE)
    e.runs = {}
    threads = torch.get_num_threads()
    # One thread: the tiny model gains little from two, and a single thread does not thrash when other
    # processes share the CPU (OpenMP barriers of many tiny ops under oversubscription).
    torch.set_num_threads(1)
    yield e
    torch.set_num_threads(threads)
    e.backend.close()


def _config(e, **kw):
    # eps weighting: its per-step loss is comparable across noise levels, so "the loss went down" can be read
    # off 50 steps (v's (1 + sigma^2) spans 1..200 between steps); test_training_command covers the default
    base = dict(steps=STEPS, batch_size=2, lr=1e-2, rank=4, acl_weight=0.0, seed=0, loss_weighting="eps")
    base.update(kw)
    return e.training.TrainConfig(**base)


def _run(e, name, **kw):
    """Train once per name (the runs are shared by several tests)."""
    if name not in e.runs:
        cfg = _config(e, **{k: v for k, v in kw.items() if k != "resume"})
        out = e.tmp / f"{name}.safetensors"
        e.runs[name] = (cfg, e.training.train(e.backend, e.dataset, cfg, out, progress=False, resume=kw.get("resume")))
    return e.runs[name]


# ---- (a) a fresh adapter changes nothing ---------------------------------------------------------------
def _nodes(e):
    N = e.N.NODE_CLASS_MAPPINGS
    return N["P3SApply"], N["P3SLoadAdapter"]


def _host_models(e):
    if not hasattr(e, "m"):
        with torch.inference_mode():
            e.m, e.clip, e.vae = e.N.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
            e.cv = e.N.CLIPVisionLoader().load_clip("tiny_clip_vision.safetensors")[0]
            e.pos = e.N.CLIPTextEncode().encode(e.clip, "a dog on the beach")[0]
            e.neg = e.N.CLIPTextEncode().encode(e.clip, "")[0]
        e.image, e.masks, e.centers = scenes.two_subjects(SIDE, SIDE, seed=3)
    return e


def _sample(e, model):
    with torch.inference_mode():
        return e.N.common_ksampler(model, 7, 3, 5.0, "euler", "normal", e.pos, e.neg,
                                   {"samples": torch.zeros(1, 4, SIDE // 8, SIDE // 8)})[0]["samples"]


def _apply(e, adapter=None, model=None, clip_vision="default"):
    Apply, _ = _nodes(e)
    with torch.inference_mode():
        return Apply.execute(model or e.m, e.vae, e.image[None], 1.0, 0.0, 1.0, mask=e.masks[:1].float(),
                             clip_vision=e.cv if clip_vision == "default" else clip_vision, adapter=adapter).result


def _spec(e, family="sd15", clip_width=64, model=None):
    models = e.host.pack("nodes.models")
    m = model or e.m
    return e.adapter_mod.AdapterSpec(family=family, rank=4, alpha=4.0, clip_width=clip_width,
                                     ctx_dim=models.context_dim(m), layers=models.transformer_layers(m), read_rank=4)


def test_zero_initialised_adapter_equals_training_free(env):
    e = _host_models(env)
    path = e.host.base / "models" / "p3s" / "p3s_zero.safetensors"
    e.adapter_mod.save_adapter(e.adapter_mod.P3SAdapter(_spec(e)), path)
    _, Load = _nodes(e)
    adapter = Load.execute("p3s_zero.safetensors").result[0]
    assert next(adapter.parameters()).device.type == "cpu" and next(adapter.parameters()).dtype == torch.float32
    free = _sample(e, _apply(e)[0])
    tuned = _sample(e, _apply(e, adapter=adapter)[0])
    assert (free - tuned).abs().max().item() <= 1e-6
    assert (free - _sample(e, e.m)).abs().max().item() > 1e-3  # and injection itself is on


def test_read_deltas_change_the_image_and_weight_zero_stays_plain(env):
    """Read deltas act only on the subject tokens' read: nudged, they change the image; at weight 0 there is
    no read, so the image is plain sampling exactly."""
    e = _host_models(env)
    a = e.adapter_mod.P3SAdapter(_spec(e))
    with torch.no_grad():
        for name, p in a.named_parameters():
            if name.startswith("read.") and name.endswith("up.weight"):
                p.normal_(std=0.5, generator=torch.Generator().manual_seed(0))
    Apply, _ = _nodes(e)
    free = _sample(e, _apply(e)[0])
    read = _sample(e, _apply(e, adapter=a)[0])
    assert (free - read).abs().max().item() > 1e-3
    with torch.inference_mode():
        zero = Apply.execute(e.m, e.vae, e.image[None], 0.0, 0.0, 1.0, mask=e.masks[:1].float(), clip_vision=e.cv,
                             adapter=a).result[0]
    assert torch.equal(_sample(e, zero), _sample(e, e.m))


def test_a_learned_read_gain_multiplies_the_weight_in_the_sampler(env):
    """An adapter whose read gain is log 2 at weight 1.5 samples the image the same adapter without gain gives
    at weight 3; gain 0 changes nothing; weight 0 stays plain sampling whatever the gain."""
    e = _host_models(env)
    with_gain = e.adapter_mod.P3SAdapter(dataclasses.replace(_spec(e), read_gain=True))
    without = e.adapter_mod.P3SAdapter(_spec(e))
    without.load_state_dict({k: v for k, v in with_gain.state_dict().items() if k != "read_gain"})
    Apply, _ = _nodes(e)

    def sample(adapter, weight):
        with torch.inference_mode():
            m = Apply.execute(e.m, e.vae, e.image[None], weight, 0.0, 1.0, mask=e.masks[:1].float(), clip_vision=e.cv,
                              adapter=adapter).result[0]
        return _sample(e, m)

    assert torch.equal(sample(with_gain, 1.5), sample(without, 1.5))  # a fresh gain is 0: weight x 1
    with torch.no_grad():
        with_gain.read_gain.fill_(math.log(2.0))
    gained, strong = sample(with_gain, 1.5), sample(without, 3.0)
    # the same numbers summed in another order (log 1.5 + log 2 vs log 3), through 3 sampling steps
    scale = strong.abs().max().item()
    assert (gained - strong).abs().max().item() <= 1e-3 * scale
    assert (gained - sample(without, 1.5)).abs().max().item() > 2e-2 * scale, (gained - sample(without, 1.5)).abs().max().item() / scale
    assert torch.equal(sample(with_gain, 0.0), _sample(e, e.m))


def test_a_subject_cross_attention_changes_the_image_only_where_p3s_reads(env):
    """A nudged subject cross-attention changes the sampled image; fresh it changes nothing; at weight 0 the image
    is plain sampling; the model it patched is left as it was (the clone holds the attn2 patches)."""
    e = _host_models(env)
    fresh = e.adapter_mod.P3SAdapter(dataclasses.replace(_spec(e), subject_attn=16))
    Apply, _ = _nodes(e)
    base = _sample(e, _apply(e, adapter=e.adapter_mod.P3SAdapter(_spec(e)))[0])
    assert torch.equal(_sample(e, _apply(e, adapter=fresh)[0]), base)
    nudged = e.adapter_mod.P3SAdapter(dataclasses.replace(_spec(e), subject_attn=16))
    with torch.no_grad():
        for name, p in nudged.named_parameters():
            if name.startswith("xattn.") and name.endswith("to_out.weight"):
                p.normal_(std=0.5, generator=torch.Generator().manual_seed(0))
    patched = _apply(e, adapter=nudged)[0]
    opts = patched.model_options["transformer_options"]["patches"]
    assert len(opts["attn2_patch"]) == 1 and len(opts["attn2_output_patch"]) == 1
    assert "attn2_patch" not in e.m.model_options.get("transformer_options", {}).get("patches", {})
    assert (_sample(e, patched) - base).abs().max().item() > 1e-3
    with torch.inference_mode():
        zero = Apply.execute(e.m, e.vae, e.image[None], 0.0, 0.0, 1.0, mask=e.masks[:1].float(), clip_vision=e.cv,
                             adapter=nudged).result[0]
    assert torch.equal(_sample(e, zero), _sample(e, e.m))


# ---- (b) training lowers the loss; the file works in a real server --------------------------------------
def test_training_lowers_the_loss_and_writes_adapter_and_curve(env):
    cfg, res = _run(env, "off", checkpoint_every=25)
    losses = [h["loss"] for h in res.history]
    assert [h["step"] for h in res.history] == list(range(1, STEPS + 1))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first, (first, last)
    out = env.tmp / "off.safetensors"
    spec = env.adapter_mod.read_adapter_header(out)
    assert spec.family == "sd15" and spec.rank == 4
    adapter = env.adapter_mod.load_adapter(out)
    assert abs(float(adapter.gate.detach())) > 0  # it learned something
    assert spec.read_rank == cfg.read_rank > 0  # the default trains read deltas too, and they moved
    assert max(p.abs().max().item() for n, p in adapter.named_parameters()
               if n.startswith("read.") and n.endswith("up.weight")) > 0
    from PIL import Image
    with Image.open(out.with_suffix(".loss.png")) as im:
        assert im.size[0] > 100
    # held-out diffusion loss is lower than with the fresh adapter
    held = env.training.SubjectDataset(env.heldout, SIDE)
    fresh = env.training.make_adapter(env.backend, cfg)
    assert env.training.evaluate(env.backend, res.adapter, held, cfg)["diffusion"] < \
        env.training.evaluate(env.backend, fresh, held, cfg)["diffusion"]


def _prompt(adapter: str | None, image_name: str, points: str) -> dict:
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a dog on the beach", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": SIDE, "height": SIDE, "batch_size": 1}},
        "5": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "6": {"class_type": "P3SPointPicker", "inputs": {"image": ["5", 0], "points": points}},
        "7": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "tiny_clip_vision.safetensors"}},
        "8": {"class_type": "P3SApply", "inputs": {"model": ["1", 0], "vae": ["1", 2], "reference": ["5", 0],
                                                   "points": ["6", 0], "weight": 1.0, "start_percent": 0.0,
                                                   "end_percent": 1.0, "clip_vision": ["7", 0]}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["8", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 3, "steps": 3, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "p3s_adapter"}},
    }
    if adapter:
        p["12"] = {"class_type": "P3SLoadAdapter", "inputs": {"adapter_name": adapter}}
        p["8"]["inputs"]["adapter"] = ["12", 0]
    return p


@pytest.mark.server
def test_trained_adapter_loads_and_changes_the_image_in_the_server(env, server):
    from PIL import Image
    _run(env, "off", checkpoint_every=25)
    shutil.copy(env.tmp / "off.safetensors", server.base / "models" / "p3s" / "trained_tiny.safetensors")
    image, _, centers = scenes.two_subjects(SIDE, SIDE, seed=4)
    scenes.save_png(image, server.base / "input" / "p3s_adapter_ref.png")
    points = json.dumps({"width": SIDE, "height": SIDE, "positive": [{"x": centers[0][0], "y": centers[0][1]}]})
    outs = []
    for adapter in (None, "trained_tiny.safetensors"):
        entry = server.run(_prompt(adapter, "p3s_adapter_ref.png", points))
        png = server.view(entry["outputs"]["11"]["images"][0])
        outs.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16))
    assert np.abs(outs[0] - outs[1]).max() > 0, "the trained adapter did not change the output"
    spec = server.get("/object_info/P3SLoadAdapter")["P3SLoadAdapter"]["input"]["required"]["adapter_name"]
    names = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # V3 combos serialise as ["COMBO", {options}]
    assert "trained_tiny.safetensors" in names


# ---- (c) the consistency term keeps the prompt's cross-attention ----------------------------------------
def test_attention_consistency_term_lowers_cross_attention_deviation(env):
    cfg_off, off = _run(env, "off", checkpoint_every=25)
    cfg_on, on = _run(env, "on", acl_weight=1e5)
    held = env.training.SubjectDataset(env.heldout, SIDE)
    dev_off = env.training.evaluate(env.backend, off.adapter, held, cfg_off)["acl"]
    dev_on = env.training.evaluate(env.backend, on.adapter, held, cfg_on)["acl"]
    env.runs["acl"] = (dev_on, dev_off)
    assert dev_on < dev_off, (dev_on, dev_off)
    assert all(math.isfinite(h["acl"]) for h in on.history)


# ---- (d) resume continues the run ------------------------------------------------------------------------
def test_resume_from_checkpoint_continues_the_loss_curve(env):
    cfg, full = _run(env, "off", checkpoint_every=25)
    ckpt = env.tmp / "off.step000025.pt"
    assert ckpt.is_file()
    _, resumed = _run(env, "resumed", checkpoint_every=25, resume=ckpt)
    assert [h["step"] for h in resumed.history] == list(range(1, STEPS + 1))
    def same(h1, h2):
        return h1.keys() == h2.keys() and all(h1[k] == h2[k] or (math.isnan(h1[k]) and math.isnan(h2[k])) for k in h1)
    assert all(same(a, b) for a, b in zip(resumed.history[:25], full.history[:25]))  # history restored as saved
    assert all(isinstance(h["step"], int) for h in resumed.history)
    a = np.array([h["loss"] for h in resumed.history[25:]])
    b = np.array([h["loss"] for h in full.history[25:]])
    assert np.allclose(a, b, rtol=1e-4, atol=1e-6), np.abs(a - b).max()
    for k, v in full.adapter.state_dict().items():
        assert torch.allclose(v, resumed.adapter.state_dict()[k], atol=1e-5), k
    with pytest.raises(ValueError, match="P3S: --resume"):
        env.training.load_checkpoint(env.tmp / "off.safetensors", full.adapter, None, None)


# ---- the training command itself ------------------------------------------------------------------------
def test_training_command_writes_adapter_checkpoints_and_samples(env):
    out = env.tmp / "cli" / "cli_adapter.safetensors"
    out.parent.mkdir()
    args = env.ta.build_parser().parse_args([
        "--checkpoint", str(env.ckpt), "--clip-vision", str(env.cv_path), "--data", str(env.data),
        "--output", str(out), "--steps", "4", "--batch-size", "1", "--rank", "2", "--acl-weight", "10",
        "--sample-every", "4", "--sample-steps", "2", "--checkpoint-every", "2", "--resolution", str(SIDE),
        "--selection-features", "clip", "--no-progress", "--prompt-template", "a photo of {caption}"])
    res = env.train.run_training(env.ta.make_job(args, env.train))
    assert len(res.history) == 4
    assert out.is_file() and out.with_suffix(".loss.png").is_file()
    assert (out.parent / "cli_adapter.step000002.pt").is_file() and (out.parent / "cli_adapter.step000004.pt").is_file()
    samples = sorted((out.parent / "cli_adapter_samples").glob("step_*.png"))
    assert [s.name for s in samples] == ["step_000004.png"]
    meta = env.adapter_mod.read_adapter_header(out)
    assert meta.rank == 2
    assert meta.read_rank == env.training.TrainConfig.read_rank > 0  # the defaults: read deltas, v weighting
    assert all(math.isfinite(h["loss"]) for h in res.history)


# ---- paired references (references/ + reference_masks/ or reference_points/) -----------------------------
def _write_pairs(root: Path, seeds) -> Path:
    """Targets in images/, a different photo of the subject in references/ (clicks for the first one)."""
    for sub in ("images", "captions", "references", "reference_masks", "reference_points"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(seeds):
        target, _, _ = scenes.two_subjects(SIDE, SIDE, seed=seed)
        ref, masks, centers = scenes.two_subjects(SIDE, SIDE, seed=seed + 50)
        stem = f"pair{seed}"
        scenes.save_png(target, root / "images" / f"{stem}.png")
        (root / "captions" / f"{stem}.txt").write_text("a dog on the grass\n")
        scenes.save_png(ref.flip(0), root / "references" / f"{stem}.png")  # upside down: unlike any target
        if n == 0:
            cx, cy = centers[0]
            (root / "reference_points" / f"{stem}.json").write_text(json.dumps(
                {"width": SIDE, "height": SIDE, "positive": [{"x": cx, "y": SIDE - 1 - cy}], "negative": []}))
        else:
            scenes.save_mask(masks[n % 2].flip(0), root / "reference_masks" / f"{stem}.png")
    return root


def test_paired_references_train_on_the_tiny_model(env):
    data = _write_pairs(env.tmp / "pairs", range(30, 34))
    dataset = env.training.SubjectDataset(data, SIDE)
    for i in (0, 1):
        sample = dataset[i]
        assert sample.reference is not None and sample.mask is None and sample.points is None
        ref = env.training.prepare_reference(sample, torch.Generator().manual_seed(0))
        inside = ref.mask > 0.5
        assert inside.any()
        # the subject-only reference is cut out of the reference photo, not out of the target
        assert torch.allclose(ref.subject[inside], sample.reference.image[inside])
        assert not torch.allclose(ref.subject[inside], sample.image[inside])
    cfg = _config(env, steps=4, checkpoint_every=0, read_gain=1, subject_attn=16)
    out = env.tmp / "pairs" / "pairs.safetensors"
    res = env.training.train(env.backend, dataset, cfg, out, progress=False)
    assert [h["step"] for h in res.history] == [1, 2, 3, 4]
    assert all(math.isfinite(h["loss"]) for h in res.history)
    spec = env.adapter_mod.read_adapter_header(out)
    assert spec.family == "sd15" and spec.read_gain  # --read-gain 1: the gains are trained and saved
    gains = env.adapter_mod.load_adapter(out).read_gain.detach()
    assert gains.shape == (len(spec.layers),) and gains.abs().max().item() > 0
    assert spec.subject_attn == 16  # --subject-attn 16: the subject cross-attention trains (to_out left zero)
    trained = env.adapter_mod.load_adapter(out)
    assert all(trained.has_subject_attn(k) for k, _ in spec.layers)
    assert max(p.abs().max().item() for n, p in trained.named_parameters()
               if n.startswith("xattn.") and n.endswith("to_out.weight")) > 0


def test_subject_loss_weight_trains_on_the_real_backend(env):
    """--subject-loss-weight: the backend hands the targets' subject masks at latent size to the loss (the same
    seed, batch and noise give another step-1 loss), the file records the weight, and paired targets without
    masks/<stem>.png are refused before step 1."""
    base = dict(steps=2, checkpoint_every=0)
    plain = env.training.train(env.backend, env.dataset, _config(env, **base), None, progress=False)
    out = env.tmp / "subject_loss.safetensors"
    weighted = env.training.train(env.backend, env.dataset, _config(env, subject_loss_weight=8.0, **base), out,
                                  progress=False)
    assert all(math.isfinite(h["loss"]) for h in weighted.history)
    assert weighted.history[0]["loss"] != pytest.approx(plain.history[0]["loss"], rel=1e-4)
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        assert float(f.metadata()["p3s_subject_loss_weight"]) == 8.0
    pairs = env.training.SubjectDataset(_write_pairs(env.tmp / "pairs_no_masks", range(40, 42)), SIDE)
    with pytest.raises(ValueError, match=r"needs the subject's mask in every target, and 2 paired image\(s\) "
                                         r"have none \(masks/pair40.png, masks/pair41.png\)"):
        env.training.train(env.backend, pairs, _config(env, subject_loss_weight=8.0, **base),
                           env.tmp / "refused.safetensors", progress=False)
    assert not (env.tmp / "refused.safetensors").exists()


def test_a_cosine_learning_rate_schedule_trains_on_the_real_backend(env):
    """--lr-schedule cosine on the real backend: the first step runs at --lr (same loss curve as constant up to
    step 2), the decayed later steps move the adapter differently, and the file records the schedule."""
    base = dict(steps=3, checkpoint_every=0)
    flat = env.training.train(env.backend, env.dataset, _config(env, **base), None, progress=False)
    out = env.tmp / "cosine.safetensors"
    cos = env.training.train(env.backend, env.dataset, _config(env, lr_schedule="cosine", **base), out,
                             progress=False)
    assert [h["loss"] for h in cos.history[:2]] == pytest.approx([h["loss"] for h in flat.history[:2]], rel=1e-6)
    moved = [(a - b).abs().max().item() for a, b in zip(cos.adapter.parameters(), flat.adapter.parameters())]
    assert max(moved) > 0
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        assert (f.metadata()["p3s_lr_schedule"], f.metadata()["p3s_warmup_steps"]) == ("cosine", "0")


# ---- (e) refusals ----------------------------------------------------------------------------------------
def _unpatched(e, model, before):
    patch = e.host.pack("nodes.patch")
    assert patch.find_patches(model) == [] and repr(model.model_options) == before


def test_refusals_load_nothing_and_leave_the_model_unpatched(env):
    from safetensors.torch import save_file
    e = _host_models(env)
    Apply, Load = _nodes(e)
    folder = e.host.base / "models" / "p3s"
    before = repr(e.m.model_options)

    (folder / "pickled.ckpt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match=r"^P3S: .*safetensors"):
        Load.execute("pickled.ckpt")
    save_file({"lora.weight": torch.zeros(2, 2)}, str(folder / "a_lora.safetensors"))
    with pytest.raises(ValueError, match=r"^P3S: .*not a P3S adapter"):
        Load.execute("a_lora.safetensors")
    good = folder / "p3s_good.safetensors"
    e.adapter_mod.save_adapter(e.adapter_mod.P3SAdapter(_spec(e)), good)
    data = good.read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"^P3S: .*truncated or corrupt"):
        Load.execute("truncated.safetensors")
    with pytest.raises(ValueError, match=r"^P3S: .*'missing\.safetensors' was not found.*Searched: .*p3s"):
        Load.execute("missing.safetensors")

    # an SDXL adapter on the SD1.5 MODEL
    sdxl = e.host.tiny.make_sdxl_patcher()
    e.adapter_mod.save_adapter(e.adapter_mod.P3SAdapter(_spec(e, "sdxl", model=sdxl)), folder / "p3s_sdxl.safetensors")
    adapter_xl = Load.execute("p3s_sdxl.safetensors").result[0]
    with pytest.raises(ValueError, match=r"^P3S: adapter 'p3s_sdxl.safetensors' is for SDXL but the MODEL is SD1.5"):
        _apply(e, adapter=adapter_xl)
    _unpatched(e, e.m, before)
    # an SD1.5 adapter on the (tiny) SDXL MODEL
    adapter_15 = Load.execute("p3s_good.safetensors").result[0]
    xl_before = repr(sdxl.model_options)
    with pytest.raises(ValueError, match=r"^P3S: adapter 'p3s_good.safetensors' is for SD1.5 but the MODEL is SDXL"):
        _apply(e, adapter=adapter_15, model=sdxl)
    _unpatched(e, sdxl, xl_before)
    # a CLIP_VISION whose token width does not match the adapter's
    e.adapter_mod.save_adapter(e.adapter_mod.P3SAdapter(_spec(e, clip_width=1024)), folder / "p3s_vitl.safetensors")
    adapter_l = Load.execute("p3s_vitl.safetensors").result[0]
    with pytest.raises(ValueError, match=r"^P3S: CLIP_VISION gives token width 64 but adapter .* expects 1024 \(ViT-L\)"):
        _apply(e, adapter=adapter_l)
    _unpatched(e, e.m, before)
    # an adapter without a CLIP vision model
    with pytest.raises(ValueError, match=r"^P3S: clip_vision"):
        _apply(e, adapter=adapter_15, clip_vision=None)
    _unpatched(e, e.m, before)


def test_adapter_follows_the_model_device_without_moving_the_loaded_one(env):
    """The patch uses the adapter where the MODEL runs (ComfyUI moves patches with model_patches_to); a
    loaded adapter on another device is copied once, never moved in place."""
    patch_mod = env.host.pack("nodes.patch")
    schedule_mod = env.host.pack("p3s_core.schedule")
    e = _host_models(env)
    adapter = env.adapter_mod.P3SAdapter(_spec(e))
    p = patch_mod.P3SPatch(reference_latent=torch.zeros(1, 4, 8, 8), mask=torch.ones(1, 8, 8),
                           schedule=schedule_mod.WeightSchedule.constant(1.0), adapter=adapter)
    assert p.to(torch.device("cpu")) is p and p.adapter is adapter  # same device: the very object
    assert p.to(torch.float16) is p and p.adapter is adapter and next(adapter.parameters()).dtype == torch.float32
    model = e.m.clone()
    p.install(model)
    model.model_patches_to(torch.device("meta"))  # what ComfyUI does when it loads the MODEL elsewhere
    moved = p.adapter
    assert moved is not adapter and next(moved.parameters()).device.type == "meta"
    assert next(adapter.parameters()).device.type == "cpu"
    p.to("meta")
    assert p.adapter is moved  # copied once
    model.model_patches_to(torch.device("cpu"))  # offloaded back: the loaded adapter itself again
    assert p.adapter is adapter


# ---- multi-process (torchrun, gloo on CPU: the same code path as NCCL on GPUs) ----------------------------
def test_torchrun_two_processes_train_one_adapter(env):
    import os
    import subprocess
    import sys
    from host import COMFYUI_DIR, TINY_REGISTRAR
    out = env.tmp / "ddp" / "ddp_adapter.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "scripts" / "train_adapter.py"), "--custom-node", str(TINY_REGISTRAR), "--cpu",
           "--checkpoint", str(env.ckpt), "--clip-vision", str(env.cv_path), "--data", str(env.data),
           "--output", str(out), "--steps", "4", "--batch-size", "1", "--rank", "2",
           "--resolution", str(SIDE), "--checkpoint-every", "2", "--no-progress"]
    env_vars = dict(os.environ, OMP_NUM_THREADS="1", COMFYUI_DIR=str(COMFYUI_DIR))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env_vars)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert log.count("P3S: wrote") == 1, log[-3000:]  # rank 0 alone writes files
    assert out.is_file() and (out.parent / "ddp_adapter.step000004.pt").is_file()
    assert env.adapter_mod.read_adapter_header(out).rank == 2


def test_training_command_on_the_sdxl_family(env):
    """SDXL path of the trainer (pooled text / ADM input, two text encoders) on the tiny SDXL checkpoint."""
    out = env.tmp / "cli_xl" / "xl_adapter.safetensors"
    out.parent.mkdir()
    ckpt = env.host.base / "models" / "checkpoints" / "tiny_sdxl.safetensors"
    args = env.ta.build_parser().parse_args([
        "--checkpoint", str(ckpt), "--clip-vision", str(env.cv_path), "--data", str(env.data),
        "--output", str(out), "--steps", "3", "--batch-size", "1", "--rank", "2", "--acl-weight", "10",
        "--resolution", str(SIDE), "--checkpoint-every", "0", "--no-progress"])
    res = env.train.run_training(env.ta.make_job(args, env.train))
    assert len(res.history) == 3 and all(math.isfinite(h["loss"]) for h in res.history)
    meta = env.adapter_mod.read_adapter_header(out)
    assert meta.family == "sdxl" and any(k.endswith(".1") for k, _ in meta.layers)  # depth-2 SDXL blocks

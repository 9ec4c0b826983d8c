"""worldbench (issue #10, phase A): the world is deterministic and its truth matches its pixels; the
reader reads clean held-out renders; a briefly trained world model loads through the real host's
CheckpointLoaderSimple / CLIPVisionLoader and samples through KSampler, also patched by P3S Apply.

The world model and the reader are trained once into ~/.cache/p3s/world/quick-<hash>/ (the ``--quick``
config, a couple of minutes on 2 cores) and reused by later runs.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import worldbench
from worldbench import draw, world
from worldbench.settings import AdapterSettings, RunSettings

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("P3S_WORLD_QUIET", "1")


# ---- the world ----------------------------------------------------------------------------------------
def test_world_is_deterministic_by_seed():
    a, b = world.training_image(7), world.training_image(7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels) and a.caption == b.caption
    c = world.training_image(8)
    assert not np.array_equal(a.image, c.image)
    ca, cb = world.test_case("test", 3), world.test_case("test", 3)
    assert np.array_equal(ca.reference.image, cb.reference.image) and ca.prompt == cb.prompt
    assert ca.click == cb.click
    assert not np.array_equal(world.test_case("val", 3).reference.image, ca.reference.image)


def _near(pixels: np.ndarray, colour, tol: float) -> np.ndarray:
    return np.abs(pixels.astype(np.float32) / 255 - np.asarray(colour, np.float32)).max(-1) <= tol


@pytest.mark.parametrize("index", range(12))
def test_masks_and_attributes_match_the_pixels(index):
    r = world.training_image(index)
    n = len(r.scene.subjects)
    assert set(np.unique(r.labels)) <= set(range(n + 1))
    for i, s in enumerate(r.scene.subjects):
        m = r.mask(i)
        assert m.sum() >= 40, "every subject is visible"
        px = r.image[m]
        body = draw.BODY_COLOURS[s.identity.colour]
        # the body colour (lightly shaded) covers much of the subject; no other body colour does
        share = {c: _near(px, np.asarray(v) * 0.93, 0.16).mean() for c, v in draw.BODY_COLOURS.items()}
        assert share[s.identity.colour] >= 0.1 and max(share, key=share.get) == s.identity.colour, share
        # the collar colour is there
        assert _near(px, draw.COLLAR_COLOURS[s.identity.collar], 0.12).sum() >= 2
        # pattern pixels (the dark shade of the body colour) inside the subject, away from its outline
        inner = ndimage.binary_erosion(m, iterations=1)
        dark = _near(r.image[inner], np.asarray(body) * draw.PATTERN_SHADE, 0.06).sum()
        if s.identity.pattern == "plain":
            assert dark <= 4, dark
        else:
            assert dark >= 3, dark
    assert not (r.labels > 0)[r.labels == 0].any()


def test_captions_name_count_class_and_scene_never_attributes_in_prompts():
    for k in range(40):
        r = world.training_image(k)
        n, cls = len(r.scene.subjects), r.scene.subjects[0].identity.cls
        assert world.SCENE_PHRASES[r.scene.scene] in r.caption
        assert r.caption.startswith(world.COUNT_WORDS[n] + " ")
        assert cls in r.caption and all(s.identity.cls == cls for s in r.scene.subjects)
    assert world.prompt("dog", "beach") == "a dog on a beach"
    assert world.prompt("bird", "snow", 2) == "two birds in the snow"
    named = [world.training_image(k) for k in range(200)]
    assert any("collar" in r.caption for r in named), "some single-subject captions name the identity"
    for k in range(30):
        words = set(world.test_case("test", k).prompt.split())
        assert not words & (set(world.COLOURS) | set(world.COLLARS) | set(world.PATTERN_WORDS.values()))


def test_benchmark_cases_and_splits():
    splits = {i.split() for i in world.ALL_IDENTITIES}
    assert splits == {"train", "val", "test"}
    assert len(world.ALL_IDENTITIES) == 2 * 6 * 3 * 4
    for k in range(25):
        c = world.test_case("test", k)
        assert c.identity.split() == "test"
        assert 2 <= len(c.reference.scene.subjects) <= 3
        assert c.prompt_scene != c.reference.scene.scene and world.SCENE_PHRASES[c.prompt_scene] in c.prompt
        for other in c.lookalikes:  # same class, another body colour (the attribute clicked/leak score)
            assert other.cls == c.identity.cls and other.colour != c.identity.colour
        x, y = c.click
        assert c.reference.labels[int(y), int(x)] == c.target + 1
        assert all(c.reference.mask(i).sum() >= 0.03 * 64 * 64 for i in range(len(c.reference.scene.subjects)))


def test_pairs_show_one_identity_in_two_scenes():
    for k in range(10):
        a, ia, b, ib = world.pair("train", k)
        assert a.identities[ia] == b.identities[ib] and a.identities[ia].split() == "train"
        assert a.scene.scene != b.scene.scene
        assert all(i.split() == "train" for i in a.identities + b.identities)
        assert a.mask(ia).sum() > 0 and b.mask(ib).sum() > 0


def test_export_writes_the_trainer_layout(tmp_path):
    out = worldbench.export_dataset(tmp_path / "ds", 3)
    stems = sorted(p.stem for p in (out / "images").glob("*.png"))
    assert len(stems) == 3
    from PIL import Image
    for sub, ext in (("captions", ".txt"), ("masks", ".png"), ("references", ".png"), ("reference_masks", ".png")):
        assert sorted(p.stem for p in (out / sub).glob("*" + ext)) == stems
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        a, ia, b, ib = world.pair("train", int(row["stem"].split("_")[1]))
        mask = np.asarray(Image.open(out / "masks" / f"{row['stem']}.png")) > 127
        assert np.array_equal(mask, b.mask(ib)) and row["identity"] == list(b.identities[ib].key)
        assert (out / "captions" / f"{row['stem']}.txt").read_text().strip() == b.caption


# ---- the reader ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_world(host):
    """The --quick world model and reader (trained once, then reused from the cache)."""
    from worldbench import pipeline
    cfg = worldbench.get_config("quick")
    f = pipeline.train_world(cfg)
    assert f.ready()
    return cfg, f


def test_a_restarted_world_trains_only_the_unet_on_from_its_base(quick_world):
    """A world whose U-Net restarts (``restart_steps``, as ``mid_long``) reuses the trained world without the
    restart: the same text encoder, autoencoder, readers and CLIP vision, a U-Net trained on from the base's
    (changed, not retrained from scratch), its own cache folder; the base's files are left as they were, and
    the option keeps the keys (and caches) of the worlds trained before it."""
    from worldbench import config, pipeline
    from worldbench.pipeline import _load
    cfg, f = quick_world
    assert config.MID.key() == "fd310be413c8" and config.MID_LONG.base().name == "mid"
    assert config.MID_LONG.base().key() == config.MID.key() != config.MID_LONG.key()
    assert config.MID_LONG.train_command() == "python -m worldbench train --mid-long"
    base_before = f.checkpoint.read_bytes()
    restarted = replace(cfg, name="quick_restart", unet=replace(cfg.unet, restart_steps=3))
    assert restarted.base() == cfg
    g = pipeline.train_world(restarted)
    assert g.ready() and g.dir != f.dir and f.checkpoint.read_bytes() == base_before
    a, b = _load(f.checkpoint), _load(g.checkpoint)
    assert a.keys() == b.keys()
    unet_keys = [k for k in a if k.startswith("model.diffusion_model.")]
    assert all(torch.equal(a[k], b[k]) for k in a if k not in unet_keys)  # text encoder, autoencoder
    assert any(not torch.equal(a[k], b[k]) for k in unet_keys)
    # three steps from the base's weights: close to them, unlike a U-Net trained from scratch
    moved = max(float((a[k] - b[k]).abs().max()) for k in unet_keys)
    assert 0 < moved < 0.05
    assert g.reader.read_bytes() == f.reader.read_bytes() and g.vae.read_bytes() == f.vae.read_bytes()
    m = json.loads(g.metrics.read_text())
    assert m["unet_restart"]["steps"] == 3 and m["base"] == f.dir.name and "reader_clean" in m
    assert m["unet"] == json.loads(f.metrics.read_text())["unet"] and "quality" not in m  # not measured on it
    assert pipeline.train_world(restarted).checkpoint.read_bytes() == g.checkpoint.read_bytes()  # cached


def test_reader_reads_clean_heldout_renders(quick_world):
    from worldbench import pipeline, reader_train
    cfg, _ = quick_world
    reader = pipeline.load_reader(cfg)
    data = reader_train.make_data("reader_eval", 150, cfg.side, start=10_000)
    acc = reader_train.evaluate(reader, data)
    for key in ("cls_acc", "colour_acc", "pattern_acc", "collar_acc", "identity_acc", "scene_acc"):
        assert acc[key] >= 0.98, acc
    # finding and separating touching subjects needs the full reader (README figures); a smoke bound here
    assert acc["end_to_end_identity_acc"] >= 0.5, acc


# ---- the world model in the real host ---------------------------------------------------------------
def _txt2img(ckpt: str, text: str, seed: int = 1) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": 4, "cfg": 6.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "world"}},
    }


def _register(host, f) -> str:
    from worldbench import family
    family.register()
    fp = host.folder_paths
    for kind in ("checkpoints", "clip_vision"):
        if str(f.dir) not in fp.get_folder_paths(kind):
            fp.add_model_folder_path(kind, str(f.dir))
    return f.checkpoint.name


def test_world_model_loads_and_samples_through_the_host(host, quick_world):
    cfg, f = quick_world
    name = _register(host, f)
    out = host.run_prompt(_txt2img(name, "a dog on a beach"))
    img = out["7"]["images"]
    assert len(img) == 2
    from PIL import Image
    arr = np.asarray(Image.open(host.base / "output" / img[0]["subfolder"] / img[0]["filename"]))
    assert arr.shape == (64, 64, 3) and arr.std() > 2
    # the loaders gave the world family: SD1.5 architecture (P3S supports it), 4-channel latent, 8x down
    with torch.inference_mode():
        model, clip, vae = host.nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]
    from worldbench.family import CONTEXT_DIM, WorldSD15
    assert isinstance(model.model.model_config, WorldSD15)
    assert host.pack("nodes.models").model_family(model) == "sd15"
    assert vae.latent_channels == 4 and vae.downscale_ratio == 8
    cond = host.nodes.CLIPTextEncode().encode(clip, "two birds in the snow")[0]
    assert cond[0][0].shape == (1, 77, CONTEXT_DIM)
    # and the text encoder is the frozen one training used
    from worldbench import family, pipeline
    sd = pipeline._load(f.checkpoint)
    text = {k: v for k, v in sd.items() if k.startswith("cond_stage_model.")}
    ref = family.text_encoder_state(cfg.seed + 100)
    assert all(torch.equal(text[k], ref[k]) for k in ref)


def test_world_clip_vision_loads_through_clipvisionloader(host, quick_world):
    _, f = quick_world
    _register(host, f)
    from comfy_extras.nodes_clip_sdxl import __name__ as _  # noqa: F401  (ComfyUI's extras import cleanly)
    loader = host.nodes.NODE_CLASS_MAPPINGS["CLIPVisionLoader"]()
    with torch.inference_mode():
        cv = loader.load_clip(f.clip_vision.name)[0]
        out = cv.encode_image(torch.rand(1, 64, 64, 3), crop=False)["penultimate_hidden_states"]
    assert out.shape == (1, 1 + 16 * 16, 64)


def _p3s_graph(ckpt: str, case) -> dict:
    """The benchmark's graph: LoadImage -> P3S Point Picker -> P3S Apply -> KSampler -> VAEDecode."""
    x, y = case.click
    points = json.dumps({"width": 64, "height": 64, "positive": [{"x": x, "y": y}], "negative": []})
    prompt = _txt2img(ckpt, case.prompt)
    prompt.update({
        "10": {"class_type": "LoadImage", "inputs": {"image": "world_case.png"}},
        "11": {"class_type": "P3SPointPicker", "inputs": {"image": ["10", 0], "points": points}},
        "12": {"class_type": "P3SApply", "inputs": {"model": ["1", 0], "vae": ["1", 2], "reference": ["10", 0],
                                                    "points": ["11", 0], "weight": 1.0, "start_percent": 0.0,
                                                    "end_percent": 1.0}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["12", 2]}},
    })
    prompt["5"]["inputs"]["model"] = ["12", 0]
    return prompt


def test_p3s_apply_runs_on_the_world_model(host, quick_world):
    """The benchmark's graph on the world model, in-process."""
    cfg, f = quick_world
    name = _register(host, f)
    case = worldbench.test_case("val", 0)
    from PIL import Image
    Image.fromarray(case.reference.image).save(host.base / "input" / "world_case.png")
    out = host.run_prompt(_p3s_graph(name, case))
    assert len(out["7"]["images"]) == 2 and len(out["13"]["images"]) == 1


@pytest.mark.server
def test_world_model_through_a_real_server(tmp_path, quick_world):
    """With the registrar custom node, a real ComfyUI server loads the world checkpoint and CLIP vision and
    runs the benchmark's graph: LoadImage -> Point Picker -> P3S Apply (+ CLIP vision) -> KSampler."""
    import host as host_support  # tests/support (conftest puts it on sys.path)
    _, f = quick_world
    base = tmp_path / "srv"
    host_support.make_layout(base, custom_nodes=(worldbench.REGISTRAR,))
    (base / "models" / "checkpoints" / f.checkpoint.name).symlink_to(f.checkpoint)
    (base / "models" / "clip_vision" / f.clip_vision.name).symlink_to(f.clip_vision)
    case = worldbench.test_case("val", 1)
    from PIL import Image
    Image.fromarray(case.reference.image).save(base / "input" / "world_case.png")
    srv = host_support.Server(base, custom_nodes=(worldbench.REGISTRAR,))
    try:
        prompt = _p3s_graph(f.checkpoint.name, case)
        prompt["14"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": f.clip_vision.name}}
        prompt["12"]["inputs"]["clip_vision"] = ["14", 0]
        entry = srv.run(prompt, timeout=900)
        images = entry["outputs"]["7"]["images"]
        assert len(images) == 2
        from io import BytesIO
        assert Image.open(BytesIO(srv.view(images[0]))).size == (64, 64)
    finally:
        srv.stop()


# ---- the transfer benchmark (phase B) -------------------------------------------------------------------
def test_bench_variants_and_api_prompts():
    """Every variant of issue #10 is there, and each one's API prompt wires the pack's nodes as a user would."""
    from p3s_core.schedule import PRESETS
    from worldbench import bench
    assert bench.PRESETS == PRESETS
    vs = {v.name: v for v in bench.variants({"adapter_acl0": "a0.safetensors", "adapter": "a.safetensors"})}
    assert {"plain", "noselect", "per_step", "cached", "uncond_on", "adapter", "adapter_acl0"} <= set(vs)
    assert {f"sampler_{p}" for p in PRESETS} <= set(vs)
    case = world.test_case("val", 2)
    g = {n: bench.api_prompt(v, case, "ref.png", "world.safetensors", "cv.safetensors", 7, 3) for n, v in vs.items()}
    assert not any(n["class_type"].startswith("P3S") for n in g["plain"].values())
    # named: plain sampling with the clicked identity written into the prompt (and the prompted scene kept)
    assert not any(n["class_type"].startswith("P3S") for n in g["named"].values())
    named = g["named"]["2"]["inputs"]["text"]
    assert named.startswith(case.identity.describe() + " ") and named.endswith(world.SCENE_PHRASES[case.prompt_scene])
    assert case.identity.colour in named and named != case.prompt
    assert g["plain"]["4"]["inputs"]["batch_size"] == 3 and g["plain"]["2"]["inputs"]["text"] == case.prompt
    pts = json.loads(g["per_step"]["11"]["inputs"]["points"])
    assert pts["positive"] == [{"x": case.click[0], "y": case.click[1]}] and g["per_step"]["5"]["inputs"]["model"] == \
        ["12", 0]
    assert g["noselect"]["11"]["class_type"] == "SolidMask" and "points" not in g["noselect"]["12"]["inputs"]
    assert g["cached"]["12"]["inputs"]["reference_mode"] == "cached"
    assert g["uncond_on"]["12"]["inputs"]["uncond_sees_reference"] is True
    # the presets and uncond on change one setting of P3S Apply's defaults (cached)
    assert g["uncond_on"]["12"]["inputs"]["reference_mode"] == g["sampler_step"]["12"]["inputs"]["reference_mode"] \
        == "cached"
    assert g["sampler_step"]["5"]["class_type"] == "P3SSampler" and g["sampler_step"]["5"]["inputs"]["schedule"] == "step"
    assert g["adapter"]["14"]["inputs"]["adapter_name"] == "a.safetensors"
    assert g["adapter"]["12"]["inputs"]["clip_vision"] == ["13", 0]
    # an adapter samples with the reference_mode it was trained with (adapters from before the option: per_step)
    assert g["adapter"]["12"]["inputs"]["reference_mode"] == "per_step"
    import re
    pack_default = re.search(r'^DEFAULT_MODE = "(\w+)"', (REPO / "nodes" / "patch.py").read_text(), re.M).group(1)
    assert bench.DEFAULT_VARIANT == pack_default  # the benchmark's default is the pack's
    moded = {v.name: v for v in bench.variants({"adapter": "a.safetensors"}, modes={"adapter": "cached"})}
    assert moded["adapter"].mode == "cached"
    # --start-percent / --end-percent reach P3S Apply in every P3S variant (defaults: the whole run)
    assert (g["cached"]["12"]["inputs"]["start_percent"], g["cached"]["12"]["inputs"]["end_percent"]) == (0.0, 1.0)
    late = {v.name: v for v in bench.variants({"adapter": "a.safetensors"}, 2.0, window=(0.2, 0.7))}
    for name in ("cached", "noselect", "sampler_cosine", "adapter"):
        inputs = bench.api_prompt(late[name], case, "ref.png", "w.safetensors", "cv.safetensors", 7, 3)["12"]["inputs"]
        assert (inputs["weight"], inputs["start_percent"], inputs["end_percent"]) == (2.0, 0.2, 0.7)
    # --fill reaches P3S Apply in every P3S variant (default: the pack's blur)
    assert g["cached"]["12"]["inputs"]["fill"] == "blur"
    flat = {v.name: v for v in bench.variants({"adapter": "a.safetensors"}, fill="flat")}
    for name in ("per_step", "cached", "uncond_on", "sampler_step", "adapter"):
        inputs = bench.api_prompt(flat[name], case, "ref.png", "w.safetensors", "cv.safetensors", 7, 3)["12"]["inputs"]
        assert inputs["fill"] == "flat"
    # each P3S Sampler preset over an adapter (named in --variants only): the adapter, its mode and weight,
    # sampled by P3S Sampler with that schedule
    assert not any("_sampler_" in n for n in vs if n.startswith("adapter"))
    sched = {v.name: v for v in bench.variants({"adapter": "a.safetensors"}, 2.0, modes={"adapter": "cached"},
                                               adapter_schedules=True)}
    assert {f"adapter_sampler_{p}" for p in PRESETS} <= set(sched)
    ga = bench.api_prompt(sched["adapter_sampler_ramp_up"], case, "ref.png", "w.safetensors", "cv.safetensors", 7, 3)
    assert ga["5"]["class_type"] == "P3SSampler" and ga["5"]["inputs"]["schedule"] == "ramp_up"
    assert ga["5"]["inputs"]["model"] == ["12", 0] and ga["14"]["inputs"]["adapter_name"] == "a.safetensors"
    assert (ga["12"]["inputs"]["reference_mode"], ga["12"]["inputs"]["weight"]) == ("cached", 2.0)
    # a name in --variants that no variant has is refused before anything runs, not skipped in silence
    from worldbench import config
    with pytest.raises(ValueError, match="no variant named cachd.*sampler_step.*need --adapter-steps"):
        bench.run_bench(config.QUICK, RunSettings(cases=1, seeds=1, only=("plain", "cachd")))


def test_bench_last_line_and_table():
    from worldbench import bench
    t = bench.Tally()
    res = {"variants": {"plain": None, "per_step": None}}
    case = world.test_case("test", 0)
    from worldbench.reader import Found, Reading
    m = np.ones((64, 64), bool)
    t.add(Reading(case.prompt_scene, 1.0, [Found(m, *case.identity.key, 1.0)]), case)
    t.add(Reading(case.reference.scene.scene, 1.0, [Found(m, *case.lookalikes[0].key, 1.0)]), case)
    # the clicked colour with another pattern: clicked (colour identity), not clicked_full
    other_pattern = next(p for p in world.PATTERNS if p != case.identity.pattern)
    got = t.add(Reading(case.prompt_scene, 1.0, [Found(m, case.identity.cls, case.identity.colour, other_pattern,
                                                         case.identity.collar, 1.0)]), case)
    assert got["clicked"] and not got["clicked_full"] and not got["leak"]
    t = bench.Tally()
    t.add(Reading(case.prompt_scene, 1.0, [Found(m, *case.identity.key, 1.0)]), case)
    t.add(Reading(case.reference.scene.scene, 1.0, [Found(m, *case.lookalikes[0].key, 1.0)]), case)
    s = t.summary()
    assert s["n"] == 2 and s["clicked"]["share"] == 0.5 and s["leak"]["share"] == 0.5 and s["prompt"]["share"] == 0.5
    assert s["clicked_full"]["share"] == 0.5 and s["leak_full"]["share"] == 0.5
    assert s["ref_scene"]["share"] == 0.5 and s["clicked"]["ci95"][0] < 0.5 < s["clicked"]["ci95"][1]
    res["variants"] = {"plain": s, "per_step": s}
    line = bench.last_line(res, "per_step")
    assert line == ("transfer clicked=0.50 leak=0.50 prompt=0.50 plain_clicked=0.50 noselect_clicked=na "
                    "noselect_leak=na adapter_clicked=na adapter_leak=na adapter_prompt=na")
    assert "| per_step | 2 | 0.50 [" in bench.table(res)


@pytest.mark.server
def test_transfer_bench_end_to_end_through_a_real_server(tmp_path, quick_world):
    """The benchmark harness on the --quick world: an adapter trained by scripts/train_adapter.py (two steps),
    one case, one sample per variant, every variant queued to a real ComfyUI server and read by the reader.
    Checks the harness, not the transfer figures (the quick model is barely trained)."""
    from PIL import Image

    from worldbench import bench
    cfg, f = quick_world
    res = bench.bench(cfg, RunSettings(cases=1, seeds=1, split="test", steps=4),
                      AdapterSettings(steps=2, count=8, acl_weights=(100.0,)), out=tmp_path / "grid.png",
                      json_out=tmp_path / "bench.json")
    names = {v.name for v in bench.variants({"adapter": ""})}
    assert set(res["variants"]) == names
    row = res["per_case"][0]
    got_of = lambda name, m: row["variants"][name][0][m]  # noqa: E731
    assert set(row["variants"]) == names and all(len(v) == 1 for v in row["variants"].values())
    for name, s in res["variants"].items():
        assert s["n"] == 1, name
        got = row["variants"][name][0]
        assert all(s[m]["share"] == float(got[m]) for m in bench.METRICS), (name, s, got)
        assert not (got["clicked"] and got["leak"]) and (got["found"] or not got["clicked"])
    # the reader read the reference too (the control that the instrument reads this case at all)
    assert res["reader_on_references"]["clicked"] == float(row["reference_read"]["clicked"])
    line = res["last_line"]
    assert line.startswith("transfer clicked=") and line.endswith(
        f"adapter_prompt={res['variants']['adapter']['prompt']['share']:.2f}")
    assert json.loads((tmp_path / "bench.json").read_text())["variants"].keys() == res["variants"].keys()
    assert Image.open(tmp_path / "grid.png").size == (2 * 5 * 66, 2 * 66)
    assert res["grid"]["columns"] == ["reference + click", "plain", "noselect", res["best_training_free"], "adapter"]
    assert (f.dir / "adapters" / res["adapters"]["adapter"]).is_file()
    # paired against plain: one case, so each difference is that case's, with a zero-width interval
    for name in names - {"plain"}:
        for m in ("clicked", "leak"):
            p = res["paired"][name][m]
            want = float(got_of(name, m)) - float(got_of("plain", m))
            assert p == {"diff": want, "ci95": [want, want]}, (name, m, p)
    assert res["paired_table"].count("\n") == len(names)
    # the one case is drawable or not by named's one sample; every variant's clicked lands on that side
    side, empty = ("drawable", "other") if got_of("named", "clicked") else ("other", "drawable")
    assert res["drawable"]["cases"] == int(got_of("named", "clicked")) and res["drawable"]["of"] == 1
    for name in names:
        assert res["drawable"]["variants"][name] == {side: float(got_of(name, "clicked")), empty: None}, name
        read = got_of(name, "read")  # the reading behind the scores, kept for confusion tables
        assert (read is None) == (not got_of(name, "found")) and (read is None or len(read) == 4)
        assert read is None or got_of(name, "clicked") == ((read[0], read[1]) == tuple(row["identity"][:2]))
    from p3s_core.training import TrainConfig
    assert bench.adapter_mode(f.dir / "adapters" / res["adapters"]["adapter"]) == TrainConfig.reference_mode
    # same seed for every variant: the constant preset at weight_high 1 is exactly P3S Apply + KSampler, and
    # the injection (clicked or whole-image) changes the image (small on this barely trained model)
    d = row["diff"]
    assert d["sampler_constant"]["cached"] == 0.0 and d["plain"]["plain"] == 0.0
    assert d["per_step"]["plain"] > 0.0 and d["noselect"]["per_step"] > 0.0, d


def test_bench_picks_the_best_training_free_variant_on_val_only(tmp_path, monkeypatch):
    """The val run picks (and stores) the best training-free variant; a test run reports that pick, never its own."""
    from worldbench import bench
    monkeypatch.setenv("P3S_WORLD_CACHE", str(tmp_path))
    cfg = worldbench.get_config("quick")

    def summary(clicked, leak, prompt):
        return {"clicked": {"share": clicked}, "leak": {"share": leak}, "prompt": {"share": prompt}}
    run = {"steps": 20, "cfg": 6.0, "weight": 1.0, "cases": 3, "seeds": 2}
    test = {**run, "split": "test", "variants": {"plain": summary(0.0, 0, 1), "noselect": summary(1, 0, 1),
                                                 "per_step": summary(0.9, 0, 0.9), "cached": summary(0.1, 0, 0.9),
                                                 "adapter": summary(1, 0, 1)}}
    assert bench.best_training_free(test, cfg)[0] == "cached"  # no val pick yet: the pack's default
    val = {**run, "split": "val", "variants": {**test["variants"], "per_step": summary(0.95, 0.0, 1.0)}}
    assert bench.best_training_free(val, cfg)[0] == "per_step"  # plain, noselect and adapters are never picked
    best, why = bench.best_training_free(test, cfg)
    assert best == "per_step" and why.startswith("picked on val (3 cases x 2 seeds)")
    # a val run of one training-free variant (a weight sweep) reports it but does not replace the pick
    sweep = {**run, "split": "val", "variants": {"cached": summary(1, 0, 1)}}
    assert bench.best_training_free(sweep, cfg)[0] == "cached"
    assert bench.best_training_free(test, cfg)[0] == "per_step"
    assert "not this run's settings" in bench.best_training_free({**test, "weight": 0.5}, cfg)[1]
    # a val run at another weight keeps its own pick and leaves the weight-1 pick in place
    val3 = {**val, "weight": 3.0, "variants": {**test["variants"], "cached": summary(1, 0, 1)}}
    assert bench.best_training_free(val3, cfg)[0] == "cached"
    assert bench.best_training_free(test, cfg) == (best, why)
    assert bench.best_training_free({**test, "weight": 3.0}, cfg)[0] == "cached"
    assert "weight 3.0: not this run's settings" in bench.best_training_free({**test, "weight": 2.0}, cfg)[1]
    # a variant that loses the subject's class (class share > 0.05 below plain's) is never picked, however
    # high its score; when every one loses it, the val run picks nothing
    klass = lambda s, c: {**s, "class": {"share": c}}  # noqa: E731
    val2 = {**val, "weight": 2.0, "variants": {"plain": klass(summary(0, 0, 1), 0.95),
                                               "per_step": klass(summary(0.6, 0, 1), 0.91),
                                               "cached": klass(summary(0.9, 0, 1), 0.85)}}
    got, reason = bench.best_training_free(val2, cfg)
    assert got == "per_step" and "1 lost the class" in reason
    lost = {**val2, "weight": 4.0, "variants": {**val2["variants"], "per_step": klass(summary(0.6, 0, 1), 0.5)}}
    assert bench.best_training_free(lost, cfg) == ("cached", "no training-free variant keeps the class on this "
                                                          "val run (nothing picked)")
    assert json.loads((cfg.cache_dir() / bench.PICK_FILE).read_text())["last"] == "steps=20 cfg=6 weight=2"
    # a run of adapters only names no training-free variant (not plain), and its last line says na
    only = {**run, "split": "test", "variants": {"adapter": summary(0.5, 0.1, 1)}}
    assert bench.best_training_free(only, cfg)[0] == "none"
    assert bench.last_line(only, "none").startswith("transfer clicked=na leak=na prompt=na")


def test_adapter_loss_terms_are_read_from_the_trainers_log():
    """The adapter's .json records the ACL term's size next to the diffusion loss (read from the log lines)."""
    from worldbench.bench import loss_terms
    log_text = "\n".join(f"INFO P3S: step {i}/6 loss {1.0 / i:.5f} acl {i * 1e-8:.3g}" for i in range(1, 7))
    got = loss_terms(log_text)
    assert got["log_rows"] == 3 and got["acl_median"] == pytest.approx(5e-8)
    assert got["loss_median"] == pytest.approx(0.2)
    assert loss_terms("no log lines") == {}
    assert loss_terms("P3S: step 1/1 loss 0.5 acl nan")["acl_median"] is None  # ACL weight 0: not recorded


def test_paired_difference_is_matched_by_case():
    """The paired difference is the variant's share minus the base's on the same samples; its interval is tight
    when the two agree sample by sample and wider when they differ at random; a missing variant gives None."""
    from worldbench.paired import paired_difference, paired_table
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):
        base = rng.random(4) < 0.3
        lifted = base | (rng.random(4) < 0.25)  # the variant keeps every base hit and adds some
        noise = rng.random(4) < 0.3
        rows.append({"variants": {n: [{"clicked": bool(x)} for x in xs]
                                  for n, xs in (("plain", base), ("lifted", lifted), ("same", base), ("other", noise))}})
    want = np.mean([np.mean([s["clicked"] for s in r["variants"]["lifted"]]) for r in rows]) - \
        np.mean([np.mean([s["clicked"] for s in r["variants"]["plain"]]) for r in rows])
    p = paired_difference(rows, "lifted")
    assert p["diff"] == pytest.approx(want) and 0 < p["ci95"][0] < p["diff"] < p["ci95"][1]
    assert paired_difference(rows, "same") == {"diff": 0.0, "ci95": [0.0, 0.0]}
    q = paired_difference(rows, "other")
    # an unmatched variant at the same rate: a wider interval than the matched one's
    assert q["ci95"][1] - q["ci95"][0] > p["ci95"][1] - p["ci95"][0]
    assert paired_difference(rows, "absent") is None
    text = paired_table({"variants": {"plain": {}, "lifted": {}, "same": {}}, "per_case": rows}, metrics=("clicked",))
    assert text.count("\n") == 3 and "| same | +0.00 [+0.00, +0.00] |" in text


def test_drawable_split_and_merging_runs_of_the_same_cases():
    """Cases where "named" draws the identity in at least half its samples are counted apart from the others, per
    variant; runs of the same cases merge side by side (a labelled run's variants renamed, plain kept once), and
    runs of other cases or settings are refused with what differs."""
    from worldbench.breakdown import drawable_split, drawable_table, merge_runs
    def run(rates: dict, **kw) -> dict:
        rows = [{"case": i, "variants": {n: [{"clicked": j < round(4 * r[i])} for j in range(4)] for n, r in rates.items()}}
                for i in range(4)]
        return {"split": "test", "cases": 4, "seeds": 4, "steps": 20, "cfg": 6.0, "world": "w", **kw,
                "variants": {n: {} for n in rates}, "per_case": rows}
    a = run({"plain": [0, 0.25, 0, 0], "named": [1, 0.5, 0.25, 0]})
    b = run({"plain": [0, 0.25, 0, 0], "adapter": [0.75, 0.25, 0.5, 0.5]})
    c = run({"plain": [0, 0.25, 0, 0], "adapter": [0, 0, 0, 0]})
    m = merge_runs([a, b, c], [None, None, "other"])
    assert list(m["variants"]) == ["plain", "named", "adapter", "adapter_other"]
    d = drawable_split(m)
    assert d["cases"] == 2 and d["of"] == 4  # named 1 and 0.5: drawable; 0.25 and 0: not
    assert d["variants"]["adapter"] == {"drawable": pytest.approx(0.5), "other": pytest.approx(0.5)}
    assert d["variants"]["named"] == {"drawable": pytest.approx(0.75), "other": pytest.approx(0.125)}
    assert d["variants"]["adapter_other"]["drawable"] == 0.0
    assert "| adapter | 0.50 | 0.50 |" in drawable_table(d)
    assert drawable_split(b) is None and drawable_table(None) == ""  # no named: nothing to split by
    from worldbench.breakdown import colour_confusion, confusion_table
    assert colour_confusion(b, "adapter") == {}  # runs without readings
    for row, read in zip(b["per_case"], ("red", "red", None, "pink")):
        row["identity"] = ["dog", "purple" if row["case"] % 2 else "red", "plain", "black"]
        for sample in row["variants"]["adapter"]:
            sample["read"] = None if read is None else ["dog", read, "plain", "black"]
    assert colour_confusion(b, "adapter") == {"red": {"red": 4, "none": 4}, "purple": {"red": 4, "pink": 4}}
    assert "| purple | 8 | red 0.50, pink 0.50 |" in confusion_table(b, "adapter")
    with pytest.raises(ValueError, match="differ in seeds"):
        merge_runs([a, run({"plain": [0, 0, 0, 0]}, seeds=2)])
    other = run({"plain": [0, 0, 0, 0]})
    other["per_case"][0]["case"] = 9
    with pytest.raises(ValueError, match="different cases"):
        merge_runs([a, other])


def test_merge_compares_two_adapters_on_the_same_samples(tmp_path, capsys):
    """``merge A.json B.json=LABEL --against VARIANT --metrics ...``: the paired table compares every variant with
    the one named (not only with plain) on any recorded metric; an unknown metric or variant is refused by name."""
    from worldbench.__main__ import main
    from worldbench.bench import METRICS

    def run(rates: dict) -> dict:  # rates: variant -> per case (clicked share, prompt share) over 4 samples
        rows = [{"case": i, "variants": {n: [{"clicked": j < round(4 * r[i][0]), "prompt": j < round(4 * r[i][1])}
                                             for j in range(4)] for n, r in rates.items()}} for i in range(4)]
        return {"split": "val", "cases": 4, "seeds": 4, "steps": 20, "cfg": 6.0, "world": "w",
                "variants": {n: {"n": 16, **{m: {"share": 0.0, "ci95": [0.0, 1.0]} for m in METRICS}} for n in rates},
                "per_case": rows}
    a = run({"plain": [(0, 1)] * 4, "adapter": [(0.5, 1), (0.5, 1), (0.5, 0.5), (0.5, 0.5)]})
    b = run({"plain": [(0, 1)] * 4, "adapter": [(0.5, 1), (0.5, 1), (0.5, 1), (0.5, 1)]})
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    main(["merge", str(tmp_path / "a.json"), f"{tmp_path / 'b.json'}=acl", "--against", "adapter",
          "--metrics", "clicked,prompt"])
    out = capsys.readouterr().out
    assert "== against adapter on the same cases and seeds" in out
    assert "| adapter_acl | +0.00 [+0.00, +0.00] | +0.25 [+0.00, +0.50] |" in out  # the prompt won back on 2 cases
    assert "| plain | -0.50 [-0.50, -0.50] | +0.25 [+0.00, +0.50] |" in out
    with pytest.raises(SystemExit, match="--metrics 'clicked,sharpness': sharpness not among clicked, leak"):
        main(["merge", str(tmp_path / "a.json"), "--metrics", "clicked,sharpness"])
    with pytest.raises(SystemExit, match="--against 'adapter_x' is not a variant of the merged runs: plain, adapter"):
        main(["merge", str(tmp_path / "a.json"), "--against", "adapter_x"])


def test_the_weight_pick_follows_the_score_breaks_ties_low_and_refuses_a_lost_class(tmp_path, capsys):
    """``worldbench pick``: the highest clicked - leak + prompt among val runs at several weights, a tie (as
    printed) to the lower weight, and no weight whose class share falls more than 0.05 below plain's."""
    from worldbench.__main__ import main
    from worldbench.bench import METRICS

    def run(weight: float, clicked: float, leak: float, cls: float, split: str = "val") -> Path:
        def summary(**got):
            return {"n": 120, **{m: {"share": got.get(m, 1.0), "ci95": [0.0, 1.0]} for m in METRICS}}
        path = tmp_path / f"{split}_w{weight:g}_{cls}.json"
        path.write_text(json.dumps({"split": split, "weight": weight, "variants": {
            "plain": summary(clicked=0.2, leak=0.1, **{"class": 0.94}),
            "adapter": summary(clicked=clicked, leak=leak, **{"class": cls})}}))
        return str(path)
    main(["pick", run(1, 0.63, 0.14, 0.95), run(2, 0.61, 0.14, 0.93), run(3, 0.61, 0.10, 0.92)])
    out = capsys.readouterr().out
    assert out.strip().endswith("pick: weight 3")  # leak counts: 0.61 - 0.10 beats 0.63 - 0.14
    assert "| 3 | 0.61 | 0.10 | 1.00 | 0.92 (0.94) | 1.51 | yes |" in out
    main(["pick", run(3, 0.60, 0.11, 0.90), run(2, 0.61, 0.12, 0.93)])
    assert capsys.readouterr().out.strip().endswith("pick: weight 2")  # 1.49 both: the lower weight
    main(["pick", run(2, 0.61, 0.12, 0.85), run(3, 0.70, 0.05, 0.95)])
    assert capsys.readouterr().out.strip().endswith("pick: weight 3")
    main(["pick", run(1, 0.54, 0.15, 0.88), run(3, 0.57, 0.08, 0.80)])
    out = capsys.readouterr().out
    assert "no: class lost" in out and out.strip().endswith("pick: none (every weight loses the subject's class: "
                                                            "the adapter breaks the image)")
    with pytest.raises(SystemExit, match="weights are picked on the val split; a run of split 'test' was given"):
        main(["pick", run(2, 0.5, 0.1, 0.9, split="test")])
    with pytest.raises(SystemExit, match=r"two runs share a weight \(\[2.0, 2.0\]\)"):
        main(["pick", run(2, 0.5, 0.1, 0.9), run(2, 0.5, 0.1, 0.91)])
    with pytest.raises(SystemExit, match="a run at weight 2 lacks 'cached' or plain"):
        main(["pick", run(2, 0.5, 0.1, 0.9), "--variant", "cached"])


def test_a_benchmark_adapter_resumes_from_its_newest_checkpoint(quick_world, monkeypatch):
    """Long benchmark trainings write checkpoints; the next run with the same settings hands the trainer the newest
    checkpoint of that adapter (zero-padded steps sort right; never another adapter's), and once the adapter file
    exists its checkpoints are removed and its JSON names where it resumed. The trainer itself is replaced by a
    stand-in that records its command line and writes the adapter file."""
    import subprocess

    from worldbench import bench
    cfg, f = quick_world
    steps = 7  # a setting no other test trains, so the cache holds no such adapter
    settings = AdapterSettings(steps=steps, count=8, acl_weights=(100.0,), read_rank=8, weighting="v", mode="cached")
    adapter = f.dir / "adapters" / settings.resolved().file_name(100)
    adapter.parent.mkdir(exist_ok=True)
    for old in adapter.parent.glob(adapter.stem + "*"):
        old.unlink()
    assert bench.latest_checkpoint(adapter) is None
    for step in (2, 4, 6):
        (adapter.parent / f"{adapter.stem}.step{step:06d}.pt").write_bytes(b"x")
    other = adapter.parent / replace(settings, steps=800).resolved().file_name(100).replace(
        ".safetensors", ".step009000.pt")
    other.write_bytes(b"x")
    seen = []

    def trainer(cmd, **kw):
        seen.append(cmd)
        adapter.write_bytes(b"stand-in")
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(bench.subprocess, "run", trainer)
    try:
        got = bench.train_adapters(cfg, settings)
        assert got == {"adapter": adapter}
        cmd = seen[0]
        assert cmd[cmd.index("--resume") + 1] == str(adapter.parent / f"{adapter.stem}.step000006.pt")
        assert cmd[cmd.index("--checkpoint-every") + 1] == str(bench.CHECKPOINT_EVERY)
        assert cmd[cmd.index("--subject-loss-weight") + 1] == "0"  # the trainer's default, passed on
        assert not list(adapter.parent.glob(f"{adapter.stem}.step*.pt")) and other.is_file()
        assert json.loads(adapter.with_suffix(".json").read_text())["resumed_from"] == f"{adapter.stem}.step000006.pt"
        bench.train_adapters(cfg, settings)
        assert len(seen) == 1  # the adapter exists now: nothing is trained again
    finally:
        for old in [*adapter.parent.glob(adapter.stem + "*"), other]:
            old.unlink(missing_ok=True)


def test_adapter_file_names_hold_every_setting():
    """Adapters with different settings never share a cache file; files named before lr (or the gain, the subject
    loss, the lr schedule) was a setting keep their names; a setting left None is the trainer's default."""
    from p3s_core.training.config import TrainConfig
    at = AdapterSettings(steps=1200, read_rank=8, weighting="v", mode="cached")

    def name(acl: float = 100, **kw) -> str:
        return replace(at, **kw).resolved().file_name(acl)
    base = name()
    assert base == "world_adapter_acl100_s1200_b4_r8_q8_v_cached_n600.safetensors"
    others = {name(acl=0), name(lr=5e-3), name(mode="per_step"), name(read_rank=0, weighting="eps"),
              name(steps=2400, rank=16, count=2400), name(read_gain=True)}
    assert base not in others and len(others) == 6
    assert "_lr0.005_" in name(lr=5e-3)
    assert name(read_gain=True).endswith("_cached_g_n600.safetensors")
    assert name(subject_loss=8.0).endswith("_cached_m8_n600.safetensors")
    assert name(subject_loss=3.0, lr_schedule="cosine").endswith("_cached_m3_cos_n600.safetensors")
    assert name(lr_schedule="constant") == base
    r = AdapterSettings().resolved()
    assert (r.read_rank, r.weighting, r.mode, r.read_gain, r.subject_attn, r.subject_loss, r.lr_schedule) == (
        TrainConfig.read_rank, TrainConfig.loss_weighting, TrainConfig.reference_mode, TrainConfig.read_gain,
        TrainConfig.subject_attn, TrainConfig.subject_loss_weight, TrainConfig.lr_schedule)
    args = replace(at, subject_loss=3.0, lr_schedule="cosine").resolved().trainer_args(1e4)
    flag = lambda f: args[args.index(f) + 1]  # noqa: E731
    assert (flag("--steps"), flag("--acl-weight"), flag("--reference-mode"), flag("--subject-loss-weight"),
            flag("--lr-schedule"), flag("--read-gain")) == ("1200", "10000", "cached", "3", "cosine", "0")


def test_bench_command_line_builds_the_settings():
    """The bench command's flags reach the run and adapter settings; an --adapter-* flag left out stays None (the
    trainer's default), and --adapter-read-gain 0 is off, not 'unset'."""
    import argparse

    from worldbench.__main__ import _bench_args, adapter_settings, run_settings
    p = argparse.ArgumentParser()
    _bench_args(p)
    a = p.parse_args(["--cases", "3", "--split", "val", "--weight", "2", "--start-percent", "0.2", "--fill", "flat",
                      "--variants", "plain,cached,", "--adapter-steps", "50", "--acl-weights", "0", "1e4",
                      "--adapter-read-gain", "0", "--adapter-lr-schedule", "cosine"])
    assert run_settings(a) == RunSettings(cases=3, seeds=4, split="val", weight=2.0, window=(0.2, 1.0), fill="flat",
                                          only=("plain", "cached"))
    ad = adapter_settings(a)
    assert (ad.steps, ad.acl_weights, ad.read_gain, ad.lr_schedule) == (50, (0.0, 1e4), False, "cosine")
    assert ad.mode is None and ad.subject_loss is None and ad.read_rank is None
    assert adapter_settings(p.parse_args([])) == AdapterSettings()
    assert ad.variant_names() == ["adapter_acl0", "adapter"] and AdapterSettings().variant_names() == []
    # a typo in --variants stops the command with the names, before any adapter trains or any world loads
    from worldbench.__main__ import main
    with pytest.raises(SystemExit, match="no variant named adapter_acl1 in this run.*adapter_acl0_sampler_step"):
        main(["bench", "--quick", "--adapter-steps", "50", "--acl-weights", "0", "1e4",
              "--variants", "plain,adapter_acl1"])


def test_noise_levels_diagnostic_rows(quick_world, tmp_path):
    """The per-noise-level diagnostic on the quick world: every row at every level; a fresh adapter is exactly
    the training-free row of the mode it records; the injection changes the prediction."""
    from safetensors.torch import save_file

    from p3s_core.adapter import P3SAdapter, adapter_state_dict, read_adapter_header
    from worldbench import bench, noise_levels
    cfg, _ = quick_world
    trained = bench.train_adapters(cfg, AdapterSettings(steps=2, count=8, acl_weights=(100.0,)))["adapter"]  # the harness test's adapter (cached)
    fresh = tmp_path / "fresh.safetensors"
    spec = read_adapter_header(trained)
    save_file(adapter_state_dict(P3SAdapter(spec)), str(fresh),
              metadata={**spec.to_metadata(), "p3s_reference_mode": "cached"})
    res = noise_levels.noise_level_errors(cfg, [fresh, trained], count=4, batch=4, timesteps=(999, 300))
    rows, subject = res["rows"], res["subject"]
    assert set(rows) == set(subject) == {"plain", "per_step", "cached", "fresh", trained.stem}
    for table_rows in (rows, subject):
        assert all(set(r) == {999, 300} and all(v > 0 for v in r.values()) for r in table_rows.values())
        assert table_rows["fresh"] == table_rows["cached"]
        assert table_rows["cached"][999] != table_rows["plain"][999]
    assert rows["per_step"][999] != rows["plain"][999] and rows["cached"][300] != rows["plain"][300]
    # the subject figure is its own average, not the whole latent's
    assert all(subject[n][t] != rows[n][t] for n in rows for t in (999, 300))
    for key in ("rows", "subject"):
        text = noise_levels.table(res, key)
        assert text.count("\n") == 6 and "| plain | " in text and "%)" in text

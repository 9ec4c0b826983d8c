"""Example workflows: the UI->API converter, and every example_workflows/*.json run through a real server.

Each example is converted with the server's /object_info (scripts/ui_to_api.py, the converter the
demo uses), its node types and link types are checked, then it runs to completion with the model
names mapped to the tiny random test models, a 64 px latent and 2 steps.
"""
from __future__ import annotations

import io as _io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import run_example  # noqa: E402
import ui_to_api  # noqa: E402

EXAMPLES = sorted((REPO / "example_workflows").glob("*.json"))
TINY_CKPT = "tiny_sd15.safetensors"
TINY_SDXL_CKPT = "tiny_sdxl.safetensors"
TINY_CLIP_VISION = "tiny_clip_vision.safetensors"
TINY_ADAPTER = "p3s_adapter_tiny_sd15.safetensors"


# --- converter unit tests (no server) -------------------------------------------------------------

OBJECT_INFO = {
    "Loader": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}},
               "input_order": {"required": ["ckpt_name"]}, "output": ["MODEL", "CLIP"], "output_name": ["MODEL", "CLIP"]},
    "Sampler": {"input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"default": 0, "control_after_generate": True}],
                                       "steps": ["INT", {"default": 20}], "name": ["COMBO", {"options": ["x", "y"]}],
                                       "text": ["STRING", {"forceInput": True}]},
                          "optional": {"strength": ["FLOAT", {"default": 1.0}], "flag": ["BOOLEAN", {"default": False}]}},
                "input_order": {"required": ["model", "seed", "steps", "name", "text"], "optional": ["strength", "flag"]},
                "output": ["LATENT"], "output_name": ["LATENT"]},
    "Load": {"input": {"required": {"image": [["p.png"], {"image_upload": True}]}},
             "input_order": {"required": ["image"]}, "output": ["IMAGE", "MASK"], "output_name": ["IMAGE", "MASK"]},
    "Text": {"input": {"required": {"value": ["STRING", {}]}}, "input_order": {"required": ["value"]},
             "output": ["STRING"], "output_name": ["STRING"]},
    "Filter": {"input": {"required": {"model": ["MODEL", {}]}}, "input_order": {"required": ["model"]},
               "output": ["MODEL"], "output_name": ["MODEL"]},
}


def _node(nid, ctype, inputs=(), outputs=(), widgets=None, mode=0):
    return {"id": nid, "type": ctype, "mode": mode, "pos": [0, 0], "size": [100, 100],
            "inputs": [dict(name=n, type=t, link=lk, **({"widget": {"name": n}} if w else {}))
                       for n, t, lk, w in inputs],
            "outputs": [{"name": t, "type": t, "links": []} for t in outputs], "widgets_values": widgets}


def _hand_written() -> dict:
    return {"version": 0.4, "nodes": [
        _node(1, "Loader", outputs=["MODEL", "CLIP"], widgets=["b.safetensors"]),
        _node(2, "Reroute", inputs=[("", "*", 1, False)], outputs=["MODEL"]),
        _node(3, "Filter", inputs=[("model", "MODEL", 2, False)], outputs=["MODEL"], mode=4),  # bypassed
        # seed widget converted to an input and linked to a PrimitiveNode; steps linked from a muted node
        _node(4, "Sampler", inputs=[("model", "MODEL", 3, False), ("text", "STRING", 4, False),
                                    ("seed", "INT", 5, True), ("steps", "INT", None, True)],
              outputs=["LATENT"], widgets=[123, "randomize", 7, "y", 0.5, True]),
        _node(5, "Text", outputs=["STRING"], widgets=["hello"]),
        _node(6, "PrimitiveNode", outputs=["INT"], widgets=[999, "fixed"]),
        _node(7, "Note", widgets=["just a note"]),
        _node(8, "Load", outputs=["IMAGE", "MASK"], widgets=["p.png", "image"]),
        _node(9, "Text", outputs=["STRING"], widgets=["muted"], mode=2),
        _node(10, "Sampler", inputs=[("model", "MODEL", 6, False), ("text", "STRING", 7, False)],
              outputs=["LATENT"], widgets={"seed": 5, "steps": 3, "name": "x"}),
    ], "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 0, "MODEL"],
                 [4, 5, 0, 4, 1, "STRING"], [5, 6, 0, 4, 2, "INT"], [6, 1, 0, 10, 0, "MODEL"],
                 [7, 9, 0, 10, 1, "STRING"]]}


def test_converter_hand_written_case():
    p = ui_to_api.convert(_hand_written(), OBJECT_INFO)
    assert set(p) == {"1", "4", "5", "8", "10"}  # Reroute, bypassed, Primitive, Note, muted are gone
    assert p["1"]["inputs"] == {"ckpt_name": "b.safetensors"}
    s = p["4"]["inputs"]
    # the Reroute and the bypassed Filter are followed back to the loader
    assert s["model"] == ["1", 0]
    assert s["text"] == ["5", 0]
    # "randomize" is the control_after_generate value, not the next widget; the primitive feeds seed
    assert s["seed"] == 999 and s["steps"] == 7 and s["name"] == "y"
    assert s["strength"] == 0.5 and s["flag"] is True
    assert p["8"]["inputs"] == {"image": "p.png"}  # the upload widget's extra value is skipped
    assert p["10"]["inputs"] == {"model": ["1", 0], "seed": 5, "steps": 3, "name": "x"}  # muted source dropped
    assert p["4"]["class_type"] == "Sampler" and "title" in p["4"]["_meta"]


def test_converter_refuses_unknown_node_type():
    wf = {"nodes": [_node(1, "NotInstalled", outputs=["MODEL"], widgets=[])], "links": []}
    with pytest.raises(ui_to_api.ConversionError, match="NotInstalled"):
        ui_to_api.convert(wf, OBJECT_INFO)


def test_converter_link_types():
    types = ui_to_api.link_types(_hand_written(), OBJECT_INFO)
    assert (3, "MODEL", "MODEL", "MODEL") in types and (4, "STRING", "STRING", "STRING") in types
    assert not any(t[0] == 5 for t in types)  # links out of frontend-only nodes (PrimitiveNode) are not typed


def test_examples_are_ui_format_with_thumbnails():
    names = {p.stem for p in EXAMPLES}
    assert {"p3s_two_dogs_sd15", "p3s_schedule_sampler_sd15", "p3s_adapter_sd15", "p3s_sdxl",
            "p3s_interop_kjnodes_mask"} <= names
    for path in EXAMPLES:
        wf = json.loads(path.read_text())
        assert wf["version"] == 0.4 and wf["links"] and wf["nodes"], path.name
        ids = {n["id"] for n in wf["nodes"]}
        assert wf["last_node_id"] == max(ids) and wf["last_link_id"] == max(lk[0] for lk in wf["links"])
        for n in wf["nodes"]:
            assert {"id", "type", "pos", "size", "mode", "inputs", "outputs", "widgets_values"} <= set(n), n
        for lid, src, slot, dst, dslot, typ in wf["links"]:
            s = next(n for n in wf["nodes"] if n["id"] == src)
            d = next(n for n in wf["nodes"] if n["id"] == dst)
            assert lid in s["outputs"][slot]["links"] and d["inputs"][dslot]["link"] == lid, (path.name, lid)
        thumb = path.with_suffix(".jpg")
        assert thumb.is_file(), f"{thumb.name} missing"
        assert thumb.read_bytes()[:3] == b"\xff\xd8\xff" and thumb.stat().st_size < 100_000


# --- every example through the real server ---------------------------------------------------------

@pytest.fixture(scope="module")
def object_info(server):
    shutil.copy(REPO / "assets" / "two_dogs.png", server.base / "input" / "two_dogs.png")
    return server.get("/object_info")


@pytest.fixture(scope="module")
def tiny_adapter(host, server):
    """A random P3S adapter that fits the tiny SD1.5 model and the tiny CLIP vision (for the adapter example)."""
    adapter = host.pack("p3s_core.adapter")
    models = host.pack("nodes.models")
    patcher = host.tiny.make_sd15_patcher()
    spec = adapter.AdapterSpec(family="sd15", rank=4, alpha=4.0, clip_width=host.tiny.CLIP_VISION_WIDTH,
                               ctx_dim=models.context_dim(patcher), layers=models.transformer_layers(patcher))
    adapter.save_adapter(adapter.P3SAdapter(spec), server.base / "models" / "p3s" / TINY_ADAPTER)
    return TINY_ADAPTER


def _tiny_prompt(path: Path, object_info: dict, server, tag: str) -> dict:
    prompt = ui_to_api.convert(json.loads(path.read_text()), object_info)
    ckpt = TINY_SDXL_CKPT if "sdxl" in path.stem else TINY_CKPT  # each example on its own family
    prompt = run_example.map_prompt(prompt, checkpoint=ckpt, clip_vision=TINY_CLIP_VISION, latent=64, steps=2,
                                    adapter=TINY_ADAPTER)
    # A reference file name per test: ComfyUI caches node outputs between prompts, and a cached node
    # reports no UI images in /history, so identical sub-graphs of two examples would look image-less.
    name = f"two_dogs_{tag}.png"
    shutil.copy(REPO / "assets" / "two_dogs.png", server.base / "input" / name)
    for node in prompt.values():
        if node["class_type"] == "LoadImage" and node["inputs"]["image"] == "two_dogs.png":
            node["inputs"]["image"] = name
    return prompt


@pytest.mark.server
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_real_server(server, object_info, path, request):
    wf = json.loads(path.read_text())
    missing = sorted({n["type"] for n in wf["nodes"]} - set(object_info) - ui_to_api.VIRTUAL)
    assert not missing, f"{path.name}: node types not on the server: {missing}"
    for lid, stype, itype, declared in ui_to_api.link_types(wf, object_info):
        assert itype is not None, f"{path.name}: link {lid} goes to an input the node does not have"
        assert stype == itype == declared or "*" in (stype, itype), (path.name, lid, stype, itype, declared)
    if "P3SLoadAdapter" in {n["type"] for n in wf["nodes"]}:
        request.getfixturevalue("tiny_adapter")
    prompt = _tiny_prompt(path, object_info, server, path.stem)
    entry = server.run(prompt, timeout=180)
    outputs = entry["outputs"]
    for nid, node in prompt.items():
        if node["class_type"] in ("SaveImage", "PreviewImage", "P3SPointPicker"):
            key = "p3s_overlay" if node["class_type"] == "P3SPointPicker" else "images"
            images = outputs.get(nid, {}).get(key, [])
            assert images, f"{path.name}: node {nid} ({node['class_type']}) produced no image"
            assert server.view(images[0])[:4] == b"\x89PNG"


@pytest.mark.server
def test_two_dogs_example_selects_the_left_dog(server, object_info):
    """The preset points of example 1 select the left dog of the shipped reference, not the right one."""
    from PIL import Image
    prompt = _tiny_prompt(REPO / "example_workflows" / "p3s_two_dogs_sd15.json", object_info, server, "left_dog")
    entry = server.run(prompt, timeout=180)
    (mask_node,) = run_example.find_nodes(prompt, "PreviewImage", "Subject mask")
    img = entry["outputs"][mask_node]["images"][0]
    mask = np.asarray(Image.open(_io.BytesIO(server.view(img))).convert("L")) > 127
    labels = np.asarray(Image.open(REPO / "assets" / "two_dogs_masks.png")) // 100
    iou = [(mask & (labels == k)).sum() / (mask | (labels == k)).sum() for k in (1, 2)]
    assert iou[0] > 0.7 and iou[1] < 0.05, iou

"""P3SPointPicker inside the real host: in-process and through the server."""
from __future__ import annotations

import io as _io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import scenes


def _points_json(x, y, w, h, neg=()):
    return json.dumps({"width": w, "height": h, "positive": [{"x": x, "y": y}],
                       "negative": [{"x": a, "y": b} for a, b in neg]})


def _picker_prompt(image_name: str, points: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "P3SPointPicker", "inputs": {"image": ["1", 0], "points": points}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 1]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "p3s_mask"}},
    }


@pytest.mark.server
@pytest.mark.parametrize("target", [0, 1])
def test_picker_selects_clicked_subject_through_server(server, target):
    image, masks, centers = scenes.two_subjects(256, 192, seed=3)
    scenes.save_png(image, server.base / "input" / "two_subjects.png")
    x, y = centers[target]
    entry = server.run(_picker_prompt("two_subjects.png", _points_json(x, y, 256, 192)))
    saved = entry["outputs"]["4"]["images"][0]
    mask = np.asarray(Image.open(_io.BytesIO(server.view(saved))).convert("L")) > 127
    mask = torch.from_numpy(mask)
    assert scenes.iou(mask, masks[target]) > 0.7
    assert scenes.iou(mask, masks[1 - target]) < 0.05
    # the reference image reaches the Point Picker widget under its own key; no "images" (the frontend would
    # show a second, unclickable copy below the widget)
    assert "images" not in entry["outputs"]["2"]
    shown = entry["outputs"]["2"]["p3s_image"][0]
    assert shown["type"] == "temp"
    png = Image.open(_io.BytesIO(server.view(shown)))
    assert png.size == (256, 192)
    assert np.abs(np.asarray(png.convert("RGB"), dtype=np.float32) / 255 - image.numpy()).max() < 1.5 / 255
    overlay = entry["outputs"]["2"]["p3s_overlay"][0]  # the selection of the run, for scripts and the history
    assert overlay["type"] == "temp" and server.view(overlay)[:4] == b"\x89PNG"


@pytest.mark.server
def test_picker_rescales_points_to_image_size(server):
    image, masks, centers = scenes.two_subjects(320, 240, seed=4)
    scenes.save_png(image, server.base / "input" / "two_subjects_320.png")
    x, y = centers[1]
    # clicked on a 160x120 display of the same image: half the coordinates
    entry = server.run(_picker_prompt("two_subjects_320.png", _points_json(x / 2, y / 2, 160, 120)))
    saved = entry["outputs"]["4"]["images"][0]
    mask = torch.from_numpy(np.asarray(Image.open(_io.BytesIO(server.view(saved))).convert("L")) > 127)
    assert scenes.iou(mask, masks[1]) > 0.7


@pytest.mark.server
def test_picker_bad_points_give_clear_error(server):
    image, _, _ = scenes.two_subjects(128, 96, seed=5)
    scenes.save_png(image, server.base / "input" / "small.png")
    from host import ExecutionFailed
    with pytest.raises(ExecutionFailed, match="P3S: points: no positive point"):
        server.run(_picker_prompt("small.png", ""))
    with pytest.raises(ExecutionFailed, match="outside the 128x96 image"):
        server.run(_picker_prompt("small.png", _points_json(500, 20, 128, 96)))


def test_picker_batch_and_clip_vision_in_process(host):
    picker = host.nodes.NODE_CLASS_MAPPINGS["P3SPointPicker"]
    image, masks, centers = scenes.two_subjects(224, 224, seed=6)
    other, other_masks, _ = scenes.two_subjects(224, 224, seed=9)  # same layout, other pixels
    batch = torch.stack([image, other])
    x, y = centers[0]
    out = picker.execute(image=batch, points=_points_json(x, y, 224, 224))
    pts, mask = out.result
    assert mask.shape == (2, 224, 224)
    for i, m in enumerate((masks, other_masks)):  # one point set, applied to every image
        assert scenes.iou(mask[i], m[0]) > 0.7 and scenes.iou(mask[i], m[1]) < 0.05
    cv = host.tiny.make_clip_vision()
    out = picker.execute(image=image[None], points=_points_json(x, y, 224, 224), clip_vision=cv)
    assert out.result[1].shape == (1, 224, 224) and out.result[1].sum() > 0


# --- issue 14 through the real server: one bound on points, clear messages for images that cannot work ---

@pytest.mark.server
def test_picker_refuses_100000_points_quickly(server):
    import time

    from host import ExecutionFailed
    image, _, _ = scenes.two_subjects(128, 96, seed=5)
    scenes.save_png(image, server.base / "input" / "many_points.png")
    points = json.dumps({"width": 128, "height": 96, "positive": [{"x": 5, "y": 5}] * 100_000, "negative": []})
    t0 = time.time()
    with pytest.raises(ExecutionFailed, match=r"P3S: points: .*(at most 64 |more than 64 points)") as e:
        server.run(_picker_prompt("many_points.png", points))
    elapsed = time.time() - t0
    assert "Traceback" not in str(e.value)
    print(f"100,000 points refused through the server in {elapsed:.2f} s (queue + run + history)")


@pytest.mark.server
def test_picker_too_small_and_flat_images_give_one_message(server):
    from host import ExecutionFailed
    Image.new("RGB", (1, 1), (10, 200, 30)).save(server.base / "input" / "dot.png")
    with pytest.raises(ExecutionFailed, match=r"P3S: image: the image is 1x1 px; point selection needs at least 8x8"):
        server.run(_picker_prompt("dot.png", _points_json(0.5, 0.5, 1, 1)))
    messages = set()
    for i, colour in enumerate([(0, 0, 0), (255, 255, 255), (90, 90, 90), (0, 0, 255)]):
        Image.new("RGB", (80, 60), colour).save(server.base / "input" / f"picker_flat_{i}.png")
        with pytest.raises(ExecutionFailed, match=r"P3S: image: the image is one flat colour") as e:
            server.run(_picker_prompt(f"picker_flat_{i}.png", _points_json(40, 30, 80, 60)))
        messages.add(str(e.value).split(" (RGB")[0])
    assert len(messages) == 1, messages


@pytest.mark.server
def test_apply_refuses_a_reference_too_small_to_encode_up_front(server):
    """A 1x1 reference with a MASK used to fail deep inside KSampler; it is refused by P3S Apply, naming
    the minimum size, before anything is encoded."""
    from host import ExecutionFailed
    Image.new("RGB", (1, 1), (120, 80, 40)).save(server.base / "input" / "tiny_ref.png")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "tiny_ref.png"}},
        "3": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 1, "height": 1}},
        "4": {"class_type": "P3SApply", "inputs": {"model": ["1", 0], "vae": ["1", 2], "reference": ["2", 0],
                                                   "mask": ["3", 0], "weight": 1.0, "start_percent": 0.0,
                                                   "end_percent": 1.0}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 1]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }
    with pytest.raises(ExecutionFailed, match=r"P3S: reference: the reference image is 1x1 px; P3S needs at least "
                                              r"64x64 px"):
        server.run(prompt)


def test_split_option_in_process(host):
    picker = host.nodes.NODE_CLASS_MAPPINGS["P3SPointPicker"]
    image, masks, centers = scenes.two_subjects(256, 192, seed=3, touching=True)
    x, y = centers[0]
    on = picker.execute(image=image[None], points=_points_json(x, y, 256, 192)).result[1][0]
    off = picker.execute(image=image[None], points=_points_json(x, y, 256, 192), split_touching=False).result[1][0]
    assert scenes.iou(on, masks[0]) > 0.9 and scenes.iou(off, masks[0] | masks[1]) > 0.9
    schema = picker.define_schema()
    split = [i for i in schema.inputs if i.id == "split_touching"][0]
    assert split.optional and split.default is True
    apply = host.nodes.NODE_CLASS_MAPPINGS["P3SApply"].define_schema()
    assert [i for i in apply.inputs if i.id == "split_touching"][0].default is True

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

"""POST /p3s/select (the Point Picker's live preview) through the real server: results and security."""
from __future__ import annotations

import base64
import io as _io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import scenes

pytestmark = pytest.mark.server


def _points(pos, neg=(), w=None, h=None):
    d = {"positive": [{"x": x, "y": y} for x, y in pos], "negative": [{"x": x, "y": y} for x, y in neg]}
    if w is not None:
        d.update(width=w, height=h)
    return d


def _select(server, image, points, path="/p3s/select"):
    return server.request("POST", path, {"image": image, "points": points})


def _decode_mask(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(_io.BytesIO(png)).convert("L")) > 127


def _small_masks(masks: torch.Tensor, w: int, h: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(Image.fromarray(m.numpy().astype(np.uint8) * 255)
                                                    .resize((w, h), Image.NEAREST)) > 127) for m in masks])


@pytest.fixture(scope="module")
def scene(server):
    image, masks, centers = scenes.two_subjects(256, 192, seed=3)
    scenes.save_png(image, server.base / "input" / "route_scene.png")
    return image, masks, centers


@pytest.mark.parametrize("target", [0, 1])
def test_select_returns_clicked_subject_mask(server, scene, target):
    _, masks, centers = scene
    x, y = centers[target]
    status, body = _select(server, {"filename": "route_scene.png", "subfolder": "", "type": "input"},
                           json.dumps(_points([(x, y)], w=256, h=192)))
    assert status == 200, body
    assert (body["width"], body["height"]) == (256, 192)
    mask = _decode_mask(body["mask"])
    assert mask.shape == (body["mask_height"], body["mask_width"])
    small = _small_masks(masks, mask.shape[1], mask.shape[0])
    m = torch.from_numpy(mask)
    assert scenes.iou(m, small[target]) > 0.7
    assert scenes.iou(m, small[1 - target]) < 0.05
    assert 0.05 < body["area"] < 0.5


def test_select_api_prefix_object_points_and_rescale(server, scene):
    """/api/p3s/select (what api.fetchApi calls), points as an object, clicked on a half-size display."""
    _, masks, centers = scene
    x, y = centers[1]
    status, body = _select(server, {"filename": "route_scene.png", "type": "input"},
                           _points([(x / 2, y / 2)], w=128, h=96), path="/api/p3s/select")
    assert status == 200, body
    small = _small_masks(masks, body["mask_width"], body["mask_height"])
    assert scenes.iou(torch.from_numpy(_decode_mask(body["mask"])), small[1]) > 0.7


def test_select_reads_subfolders_and_temp(server, scene):
    image, masks, centers = scene
    (server.base / "input" / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    scenes.save_png(image, server.base / "input" / "sub" / "deeper" / "s.png")
    scenes.save_png(image, server.base / "temp" / "t.png")
    pts = _points([centers[0]])  # no width/height: the image's own size
    assert _select(server, {"filename": "s.png", "subfolder": "sub/deeper", "type": "input"}, pts)[0] == 200
    assert _select(server, {"filename": "t.png", "type": "temp"}, pts)[0] == 200


@pytest.fixture(scope="module")
def secret(server, scene, tmp_path_factory):
    """An image OUTSIDE every ComfyUI folder; any 200 on it would be a traversal."""
    image, _, _ = scene
    out = tmp_path_factory.mktemp("outside")
    path = out / "secret.png"
    scenes.save_png(image, path)
    return path


def _traversal_cases(server, secret):
    rel = os.path.relpath(secret, server.base / "input")
    up = rel.split(os.sep)
    return [
        {"filename": rel, "type": "input"},
        {"filename": "../" + secret.name, "subfolder": "", "type": "input"},
        {"filename": str(secret), "type": "input"},
        {"filename": secret.name, "subfolder": str(secret.parent), "type": "input"},
        {"filename": secret.name, "subfolder": os.sep.join(up[:-1]), "type": "input"},
        {"filename": secret.name, "subfolder": "sub/../../" + "/".join(up[:-1]), "type": "input"},
        {"filename": "%2e%2e%2f" + secret.name, "type": "input"},
        {"filename": "%2e%2e%2f" * 8 + str(secret).lstrip("/").replace("/", "%2f"), "type": "input"},
        {"filename": secret.name, "subfolder": "%2e%2e%2f%2e%2e", "type": "input"},
        {"filename": "..\\" + secret.name, "type": "input"},
        {"filename": secret.name, "type": "../input"},
        {"filename": "route_scene.png", "type": "models"},
    ]


def test_traversal_attempts_are_refused(server, scene, secret):
    _, _, centers = scene
    for spec in _traversal_cases(server, secret):
        status, body = _select(server, spec, _points([centers[0]]))
        assert 400 <= status < 500, (spec, status, body)
        assert body["error"].startswith("P3S: "), body
        assert "mask" not in body


def test_symlink_escaping_input_is_refused(server, scene, secret):
    _, _, centers = scene
    link = server.base / "input" / "escape.png"
    if not link.is_symlink():
        link.symlink_to(secret)
    dlink = server.base / "input" / "escape_dir"
    if not dlink.is_symlink():
        dlink.symlink_to(secret.parent, target_is_directory=True)
    for spec in ({"filename": "escape.png", "type": "input"},
                 {"filename": secret.name, "subfolder": "escape_dir", "type": "input"}):
        status, body = _select(server, spec, _points([centers[0]]))
        assert status == 403, (spec, status, body)
        assert "outside" in body["error"]


def test_symlink_inside_input_is_fine(server, scene):
    _, _, centers = scene
    link = server.base / "input" / "alias.png"
    if not link.is_symlink():
        link.symlink_to(server.base / "input" / "route_scene.png")
    assert _select(server, {"filename": "alias.png", "type": "input"}, _points([centers[0]]))[0] == 200


def test_missing_file_is_404_naming_it(server):
    status, body = _select(server, {"filename": "nope_not_here.png", "type": "input"}, _points([(5, 5)]))
    assert status == 404
    assert "nope_not_here.png" in body["error"] and body["error"].startswith("P3S: ")


def test_oversized_image_is_413(server):
    Image.new("RGB", (5000, 10), (10, 20, 30)).save(server.base / "input" / "wide.png")
    status, body = _select(server, {"filename": "wide.png", "type": "input"}, _points([(5, 5)]))
    assert status == 413, body
    assert "5000x10" in body["error"]


def test_too_many_and_malformed_points_are_400(server, scene):
    img = {"filename": "route_scene.png", "type": "input"}
    status, body = _select(server, img, _points([(10 + i, 10) for i in range(65)], w=256, h=192))
    assert status == 400 and "at most 64" in body["error"], body
    cases = [
        ("{not json", "P3S: points"),
        (json.dumps({"positive": [{"x": "a", "y": 3}]}), "not a number"),
        (json.dumps(_points([(500, 20)], w=256, h=192)), "outside the 256x192 image"),
        (json.dumps({"positive": [], "negative": [{"x": 3, "y": 3}]}), "no positive point"),
        ("", "no positive point"),
    ]
    for points, msg in cases:
        status, body = _select(server, img, points)
        assert status == 400, (points, body)
        assert body["error"].startswith("P3S: ") and msg in body["error"], (points, body)


def test_bad_request_shapes_are_400(server):
    for payload in (b"not json", json.dumps([1, 2]).encode(), json.dumps({"image": "x.png", "points": []}).encode(),
                    json.dumps({"image": {"filename": 3}, "points": []}).encode(),
                    json.dumps({"image": {"filename": "route_scene.png"}}).encode()):
        status, body = server.request("POST", "/p3s/select", payload, {"Content-Type": "application/json"})
        assert status == 400, (payload, status, body)
        assert body["error"].startswith("P3S: ")

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


# --- issue 14: bounded input, no raw tracebacks, no server paths; issue 13: the split option ---

def _status_ok(status, body):
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and body["error"].startswith("P3S: "), body


def test_hostile_points_get_a_p3s_message_and_a_4xx(server, scene):
    img = {"filename": "route_scene.png", "type": "input"}
    cases = [("[" * 100_000, "characters long"),
             (json.dumps([{"x": 1, "y": 1}] * 100_000), "request body is larger than"),  # 1.8 MB: 413
             ('[{"x": ' + "9" * 5000 + ', "y": 3}]', "NaN/inf"),
             ("[" * 3000, "not valid JSON"),
             ({"positive": [{"x": 1, "y": 1}] * 65}, "at most 64")]
    for points, fragment in cases:
        status, body = _select(server, img, points)
        _status_ok(status, body)
        assert fragment in body["error"], (str(points)[:80], body)


def test_too_small_and_flat_images_are_refused_the_same_way(server):
    Image.new("RGB", (1, 1), (200, 30, 30)).save(server.base / "input" / "one_pixel.png")
    status, body = _select(server, {"filename": "one_pixel.png", "type": "input"}, _points([(0.5, 0.5)]))
    _status_ok(status, body)
    assert "1x1 px" in body["error"] and "at least 8x8" in body["error"]
    messages = set()
    for i, colour in enumerate([(0, 0, 0), (255, 255, 255), (128, 128, 128), (255, 0, 0), (20, 120, 220)]):
        Image.new("RGB", (96, 64), colour).save(server.base / "input" / f"flat_{i}.png")
        status, body = _select(server, {"filename": f"flat_{i}.png", "type": "input"}, _points([(48, 32)]))
        _status_ok(status, body)
        messages.add(body["error"].split(" (RGB")[0])
    assert messages == {"P3S: image: the image is one flat colour"}, messages


def test_broken_files_are_4xx_without_server_paths(server, scene):
    image, _, centers = scene
    scenes.save_png(image, server.base / "input" / "whole.png")
    data = (server.base / "input" / "whole.png").read_bytes()
    (server.base / "input" / "truncated.png").write_bytes(data[: len(data) // 2])
    (server.base / "input" / "notes.png").write_bytes(b"just some text, not an image\n" * 20)
    (server.base / "input" / "empty.png").write_bytes(b"")
    for name, fragment in (("truncated.png", "truncated or corrupt"), ("notes.png", "not an image"),
                           ("empty.png", "not an image")):
        status, body = _select(server, {"filename": name, "type": "input"}, _points([centers[0]]))
        _status_ok(status, body)
        assert fragment in body["error"] and name in body["error"], body
        assert str(server.base) not in body["error"] and "/" not in body["error"].replace("/p3s", ""), body


def test_oversized_body_is_413_not_not_json(server, scene):
    body = json.dumps({"image": {"filename": "route_scene.png", "type": "input"}, "points": "[]",
                       "padding": "x" * 400_000}).encode()
    status, answer = server.request("POST", "/p3s/select", body, {"Content-Type": "application/json"})
    assert status == 413, (status, answer)
    assert answer["error"].startswith("P3S: ") and "larger than" in answer["error"]


def test_split_option_reaches_the_selection(server):
    image, masks, centers = scenes.two_subjects(256, 192, seed=3, touching=True)
    scenes.save_png(image, server.base / "input" / "touching.png")
    img = {"filename": "touching.png", "type": "input"}
    areas = {}
    for split in (None, True, False):
        payload = {"image": img, "points": _points([centers[0]], w=256, h=192)}
        if split is not None:
            payload["split_touching"] = split
        status, body = server.request("POST", "/p3s/select", payload)
        assert status == 200, body
        areas[split] = body["area"]
    assert areas[None] == areas[True]  # on by default, as in the Point Picker
    assert areas[False] > 1.5 * areas[True]  # off: the touching look-alike stays in
    # What the widget sends: the node's other widget values under "options" (unknown names ignored).
    status, body = server.request("POST", "/p3s/select", {"image": img, "points": _points([centers[0]], w=256, h=192),
                                                          "options": {"split_touching": False, "other": 3}})
    assert status == 200 and body["area"] == areas[False], body
    status, body = server.request("POST", "/p3s/select", {"image": img, "points": _points([centers[0]]),
                                                          "options": [False]})
    _status_ok(status, body)
    for bad in ("yes", 1, [True], {"on": True}):
        status, body = server.request("POST", "/p3s/select", {"image": img, "points": _points([centers[0]]),
                                                              "split_touching": bad})
        _status_ok(status, body)
        assert "split_touching" in body["error"]


def _mutate(rng, text: str) -> str:
    chars = list(text)
    for _ in range(int(rng.integers(1, 5))):
        i = int(rng.integers(0, len(chars) + 1))
        op = int(rng.integers(0, 4))
        if op == 0 and chars:
            del chars[min(i, len(chars) - 1)]
        elif op == 1:
            chars.insert(i, str(rng.choice(list('[]{}",:.-e019 \\/%\x00') + ["NaN", "1e999", "..", "null"])))
        elif op == 2:
            chars = chars[:i]
        else:
            chars.insert(i, "9" * int(rng.integers(1, 5000)))
    return "".join(chars)


def test_preview_route_fuzz(server):
    """Random and mutated request bodies (issue 14): every answer is a 200 or a 4xx with a P3S message,
    never a 500; bounded in time."""
    import time

    image, _, centers = scenes.two_subjects(48, 40, seed=7)
    scenes.save_png(image, server.base / "input" / "fuzz.png")
    valid = {"image": {"filename": "fuzz.png", "subfolder": "", "type": "input"},
             "points": _points([centers[0]], [centers[1]], w=48, h=40), "options": {"split_touching": True}}
    rng = np.random.default_rng(1414)
    t0, seen = time.time(), {"ok": 0, "4xx": 0}
    for i in range(2000):
        if time.time() - t0 > 120:
            break
        text = json.dumps(valid)
        if i % 4 == 1:
            text = json.dumps(dict(valid, points=_mutate(rng, json.dumps(valid["points"]))))
        elif i % 4 == 2:
            text = _mutate(rng, text)
        elif i % 4 == 3:
            text = json.dumps({"image": dict(valid["image"], filename=_mutate(rng, "fuzz.png")),
                               "points": _mutate(rng, json.dumps(valid["points"]))})
        status, body = server.request("POST", "/p3s/select", text.encode("utf-8", "surrogatepass"),
                                      {"Content-Type": "application/json"})
        assert status < 500, (text[:300], status, body)
        if status == 200:
            seen["ok"] += 1
        else:
            _status_ok(status, body)
            seen["4xx"] += 1
    assert seen["ok"] > 50 and seen["4xx"] > 100 and sum(seen.values()) >= 400, seen
